/** One fio job, run to completion, its figures read from fio's JSON output. */
import { runOk, type Cleanup } from './cleanup.ts';

export interface FioJob {
  filename: string;
  rw: 'read' | 'write' | 'randread' | 'randwrite';
  /** Block size, e.g. '1M', '4k'. */
  bs: string;
  /** Bytes of the file each job uses, e.g. '512M'. */
  size: string;
  seconds: number;
  numjobs?: number;
  /** Each job's region starts this much after the previous job's (disjoint regions). */
  offsetIncrement?: string;
  /**
   * fio `invalidate`: drop the file's page cache (posix_fadvise DONTNEED) when
   * the job starts and every time it wraps around the file.
   */
  invalidate: boolean;
  ioengine?: string;
}

export interface FioResult {
  bytesPerSecond: number;
  iops: number;
  ios: number;
  bytes: number;
  runtimeMs: number;
  /**
   * Mean completion latency (fio clat, us): with a synchronous engine such as
   * psync, one I/O's whole system call (fio shows no slat for those).
   */
  clatMeanUs: number;
}

export function fioArgs(job: FioJob): string[] {
  return [
    '--name=bench',
    `--filename=${job.filename}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--size=${job.size}`,
    `--runtime=${job.seconds}`,
    '--time_based',
    `--ioengine=${job.ioengine ?? 'psync'}`,
    '--direct=0',
    `--invalidate=${job.invalidate ? 1 : 0}`,
    // The files are laid out beforehand: fio must neither create, extend nor fallocate them.
    '--create_on_open=0',
    '--fallocate=none',
    '--allow_file_create=0',
    `--numjobs=${job.numjobs ?? 1}`,
    ...(job.offsetIncrement ? [`--offset_increment=${job.offsetIncrement}`] : []),
    '--group_reporting',
    '--output-format=json',
  ];
}

interface FioDirection {
  bw_bytes: number;
  iops: number;
  total_ios: number;
  io_bytes: number;
  runtime: number;
  clat_ns: { mean: number };
}

export async function runFio(cleanup: Cleanup, job: FioJob): Promise<FioResult> {
  const { stdout } = await runOk(cleanup, 'fio', fioArgs(job));
  // fio may print warnings before the JSON document.
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON:\n${stdout.trim()}`);
  const report = JSON.parse(stdout.slice(start)) as { jobs: ({ error: number; read: FioDirection; write: FioDirection } | undefined)[] };
  const result = report.jobs[0];
  if (!result) throw new Error('fio reported no job');
  if (result.error !== 0) throw new Error(`fio job failed with errno ${result.error}`);
  const d = job.rw.endsWith('read') ? result.read : result.write;
  if (d.total_ios === 0) throw new Error('fio completed no I/O');
  return { bytesPerSecond: d.bw_bytes, iops: d.iops, ios: d.total_ios, bytes: d.io_bytes, runtimeMs: d.runtime, clatMeanUs: d.clat_ns.mean / 1000 };
}
