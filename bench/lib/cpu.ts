/**
 * CPU time of a process as the kernel accounts it, read from outside:
 * /proc/<pid>/stat utime + stime (fields 14 and 15, clock ticks), which cover
 * every thread of the process, live or exited, plus cutime + cstime (16, 17:
 * its children it has waited for) and, walked through /proc, the same figures
 * of its live descendants. The kernel keeps these in clock ticks (getconf
 * CLK_TCK, normally 100 a second), so a difference of two samples is good to
 * about a tick each side: measure for long enough.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second (`getconf CLK_TCK`). */
export const CLOCK_TICKS: number = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    if (Number.isInteger(n) && n > 0) return n;
  } catch {
    // no getconf: Linux's USER_HZ is 100 on every architecture
  }
  return 100;
})();

interface ProcStat {
  ppid: number;
  /** utime + stime: every thread of the process, in clock ticks. */
  own: number;
  /** cutime + cstime: children it has waited for, in clock ticks. */
  reaped: number;
}

/** Parses /proc/<pid>/stat; undefined if the process is gone. */
function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may hold spaces or ')': count fields from the last ')'.
  // After it, index 0 is field 3 (state), so field n is at index n - 3.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const n = (field: number) => Number(f[field - 3]);
  return { ppid: n(4), own: n(14) + n(15), reaped: n(16) + n(17) };
}

/**
 * CPU time, in clock ticks, of each process in `pids` and all its descendants
 * (undefined for one not given or gone). One walk of /proc serves all of them.
 */
export function cpuTicks(pids: readonly (number | undefined)[]): (number | undefined)[] {
  const stats = new Map<number, ProcStat>();
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const s = readStat(pid);
    if (!s) continue;
    stats.set(pid, s);
    const siblings = children.get(s.ppid);
    if (siblings) siblings.push(pid);
    else children.set(s.ppid, [pid]);
  }
  const total = (pid: number, seen: Set<number>): number => {
    if (seen.has(pid)) return 0;
    seen.add(pid);
    const s = stats.get(pid)!;
    return s.own + s.reaped + (children.get(pid) ?? []).reduce((sum, c) => sum + total(c, seen), 0);
  };
  return pids.map((pid) => (pid !== undefined && stats.has(pid) ? total(pid, new Set()) : undefined));
}

/** Microseconds of CPU per operation from a difference in clock ticks. */
export function usPerOp(ticks: number, ops: number): number {
  return (ticks / CLOCK_TICKS) * 1e6 / ops;
}
