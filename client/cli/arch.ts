/** `virtiofs-client arch`: the architecture encoding tables, and translating one value by hand. */
import { parseArgs } from 'node:util';
import {
  ArchTranslationError,
  architectures,
  errnoName,
  errnoNumber,
  fileattrCommands,
  ioctlCommandName,
  ioctlCommandValue,
  kernelOpenFlags,
  kindLabel,
  lockTypeName,
  lockTypeValue,
  octal,
  openFlagValue,
  resolveArch,
  splitOpenFlags,
  translator,
  UnknownArchError,
  type Architecture,
  type Dropped,
  type ValueKind,
} from '../arch/index.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const kinds: readonly ValueKind[] = ['open', 'errno', 'lock', 'ioctl'];
const title: Readonly<Record<ValueKind, string>> = { open: 'open flags', errno: 'errno', lock: 'lock type', ioctl: 'ioctl command' };

const usage = `usage: virtiofs-client arch show [--arch <name>] [--kind open|errno|lock|ioctl] [--json]
       virtiofs-client arch translate <value> --from <arch> --to <arch> [--kind open|errno|lock|ioctl] [--json]

The values FUSE carries in the client's architecture encoding: open(2) flags,
errno numbers, POSIX lock types, and the ioctl commands the kernel itself
sends (lsattr/chattr: FS_IOC_GETFLAGS ...; docs/arch-negotiation.md).

  show        the tables of one architecture (--arch), or of all; open flags in octal
  translate   one value from --from's encoding to --to's: each flag by name on
              both sides, the result, and anything dropped or refused with the
              reason (exit status 1 when refused)

<value> is written as in C: 040000 (octal), 0o40000, 0x4000, 16384, or by name
on --from: O_RDWR|O_DIRECT, ENOTEMPTY, F_WRLCK, FS_IOC_GETFLAGS. Without --kind a
name picks the kind (E...: errno, F_...: lock type, FS_IOC...: ioctl command) and
anything else is open flags.

architectures (and other names they answer to):
${architectures.map((a) => `  ${a.name.padEnd(12)} ${[a.family, ...a.aliases].filter((n) => n !== a.name).join(', ')}`.trimEnd()).join('\n')}`;

export const archCommand: Command = {
  usage,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parse(args);
    const [sub, ...operands] = positionals;
    const kind = values.kind === undefined ? undefined : kindOption(values.kind);
    if (sub === 'show') {
      if (operands.length > 0) throw new UsageError(`arch show: unexpected '${operands[0]}'`);
      if (values.from !== undefined || values.to !== undefined) throw new UsageError('arch show takes --arch, not --from/--to');
      const shown = values.arch === undefined ? architectures : [archOption('--arch', values.arch)];
      console.log(values.json ? JSON.stringify(showJson(shown, kind), null, 2) : showText(shown, kind));
      return 0;
    }
    if (sub === 'translate') {
      if (operands.length !== 1) throw new UsageError('arch translate takes exactly one <value>');
      if (values.arch !== undefined) throw new UsageError('arch translate takes --from and --to, not --arch');
      if (values.from === undefined || values.to === undefined) throw new UsageError('arch translate needs --from <arch> and --to <arch>');
      const from = archOption('--from', values.from);
      const to = archOption('--to', values.to);
      const text = operands[0]!;
      const valueKind = kind ?? kindOfValue(text);
      return printTranslation(explain(valueKind, parseValue(text, valueKind, from), from, to), values.json === true);
    }
    throw new UsageError(sub === undefined ? 'arch: say show or translate (try --help)' : `arch: unknown subcommand '${sub}'`);
  },
};

function parse(args: string[]) {
  try {
    return parseArgs({
      args,
      allowPositionals: true,
      options: {
        arch: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        kind: { type: 'string' },
        json: { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new UsageError(`arch: ${(err as Error).message}`);
  }
}

function archOption(option: string, name: string): Architecture {
  try {
    return resolveArch(name);
  } catch (err) {
    if (err instanceof UnknownArchError) {
      throw new UsageError(`${option}: unknown architecture '${name}' (known: ${architectures.map((a) => a.name).join(', ')})`);
    }
    throw err;
  }
}

function kindOption(kind: string): ValueKind {
  if (!(kinds as readonly string[]).includes(kind)) throw new UsageError(`--kind: '${kind}' is not one of ${kinds.join(', ')}`);
  return kind as ValueKind;
}

/** A name says its kind; a number is taken as open flags. */
function kindOfValue(text: string): ValueKind {
  if (/^E[A-Z0-9]+$/.test(text)) return 'errno';
  if (/^F_[A-Z]+$/.test(text)) return 'lock';
  if (/^FS_IOC/.test(text)) return 'ioctl';
  return 'open';
}

/** C integer syntax: 0x hex, leading 0 (or 0o) octal, decimal. */
function parseNumber(text: string): number | undefined {
  let value: number;
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) value = parseInt(text.slice(2), 16);
  else if (/^0[oO][0-7]+$/.test(text)) value = parseInt(text.slice(2), 8);
  else if (/^0[0-7]+$/.test(text)) value = parseInt(text.slice(1), 8);
  else if (/^(0|[1-9][0-9]*)$/.test(text)) value = parseInt(text, 10);
  else return undefined;
  if (value > 0xffff_ffff) throw new UsageError(`${text}: does not fit in 32 bits`);
  return value;
}

function parseValue(text: string, kind: ValueKind, arch: Architecture): number {
  const terms = text.split('|').map((t) => t.trim());
  if (terms.length > 1 && kind !== 'open') throw new UsageError(`'|' joins open flags only, not ${title[kind]}`);
  let value = 0;
  for (const term of terms) {
    const termValue = parseNumber(term) ?? valueOfName(term, kind, arch);
    if (termValue === undefined) throw new UsageError(`'${term}' is neither a number nor a ${kindLabel[kind]} on ${arch.name}`);
    value |= termValue;
  }
  return value >>> 0;
}

function valueOfName(name: string, kind: ValueKind, arch: Architecture): number | undefined {
  if (kind === 'errno') return errnoNumber(name, arch);
  if (kind === 'lock') return lockTypeValue(name, arch);
  if (kind === 'ioctl') return ioctlCommandValue(name, arch);
  return openFlagValue(name, arch);
}

// ---- translate ----

interface Side {
  name: string;
  value: number;
}

/** One flag (or the whole errno / lock type) and what became of it. */
interface Row {
  from: Side;
  to?: Side;
  dropped?: string;
  error?: { code: string; reason: string };
}

interface Explanation {
  kind: ValueKind;
  from: Architecture;
  to: Architecture;
  identity: boolean;
  input: number;
  rows: Row[];
  result?: number;
  dropped: Dropped[];
  error?: ArchTranslationError;
}

/** Translates the whole value, and each flag on its own so every row says what became of it. */
function explain(kind: ValueKind, input: number, from: Architecture, to: Architecture): Explanation {
  const t = translator(kind, from, to);
  const parts = kind === 'open' ? splitOpenFlags(input, from) : [{ name: nameOf(kind, input, from) ?? String(input), value: input }];
  const rows = parts.map((part): Row => {
    const row: Row = { from: { name: part.name, value: part.value } };
    try {
      const value = t.translate(part.value, (d) => (row.dropped = d.reason));
      // An open flag that is dropped contributes nothing; errno keeps its EIO.
      if (row.dropped === undefined || kind === 'errno') row.to = { name: nameOf(kind, value, to) ?? String(value), value };
    } catch (err) {
      if (!(err instanceof ArchTranslationError)) throw err;
      row.error = { code: err.code, reason: err.reason };
    }
    return row;
  });
  const explanation: Explanation = { kind, from, to, identity: t.identity, input, rows, dropped: [] };
  try {
    explanation.result = t.translate(input, (d) => explanation.dropped.push(d));
  } catch (err) {
    if (!(err instanceof ArchTranslationError)) throw err;
    explanation.error = err;
  }
  return explanation;
}

/** The name of a single flag (or access mode), errno or lock type. */
function nameOf(kind: ValueKind, value: number, arch: Architecture): string | undefined {
  if (kind === 'errno') return errnoName(Math.abs(value), arch);
  if (kind === 'lock') return lockTypeName(value, arch);
  if (kind === 'ioctl') return ioctlCommandName(value, arch) ?? 'other (passed as it is)';
  const parts = splitOpenFlags(value, arch);
  return parts[parts.length - 1]!.name;
}

function format(kind: ValueKind, value: number): string {
  if (kind === 'ioctl') return `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
  return kind === 'open' ? octal(value) : String(value);
}

function printTranslation(e: Explanation, json: boolean): number {
  if (json) {
    console.log(
      JSON.stringify(
        {
          kind: e.kind,
          from: e.from.name,
          to: e.to.name,
          identity: e.identity,
          input: e.input,
          rows: e.rows,
          result: e.result ?? null,
          dropped: e.dropped,
          error: e.error ? { code: e.error.code, message: e.error.message } : null,
        },
        null,
        2,
      ),
    );
  } else {
    const same = e.identity ? ' (same encoding: passed through unchanged)' : '';
    const width = Math.max(...e.rows.map((r) => format(e.kind, r.from.value).length));
    const lines = [`${title[e.kind]}, ${e.from.name} -> ${e.to.name}${same}:`];
    for (const row of e.rows) {
      const left = `  ${format(e.kind, row.from.value).padStart(width)}  ${row.from.name} -> `;
      if (row.error) lines.push(`${left}refused: ${row.error.reason} (${row.error.code})`);
      else if (row.to && row.dropped) lines.push(`${left}${row.to.name} = ${format(e.kind, row.to.value)} (${row.dropped})`);
      else if (row.to) lines.push(`${left}${row.to.name} = ${format(e.kind, row.to.value)}`);
      else lines.push(`${left}dropped: ${row.dropped}`);
    }
    if (e.result !== undefined) lines.push(`result: ${format(e.kind, e.input)} (${e.from.name}) -> ${format(e.kind, e.result)} (${e.to.name})`);
    console.log(lines.join('\n'));
  }
  if (e.error) {
    console.error(`virtiofs-client: ${e.error.code}: ${e.error.message}`);
    return 1;
  }
  return 0;
}

// ---- show ----

function showJson(shown: readonly Architecture[], only: ValueKind | undefined) {
  const wanted = (kind: ValueKind) => only === undefined || only === kind;
  return {
    architectures: shown.map((a) => ({
      name: a.name,
      family: a.family,
      indicator: a.indicator,
      aliases: a.aliases,
      ...(wanted('open') && { open: { ...a.openFlags, kernelBits: kernelOpenFlags } }),
      ...(wanted('errno') && { errno: a.errno }),
      ...(wanted('lock') && { lock: a.lockTypes }),
      ...(wanted('ioctl') && { ioctl: { ...a.ioctl, commands: Object.fromEntries(ioctlNames.map((n) => [n, ioctlCommandValue(n, a)])) } }),
    })),
  };
}

/** The fileattr commands by name, 64-bit and 32-bit forms. */
const ioctlNames = Object.keys(fileattrCommands).flatMap((n) => (n.includes('FLAGS') ? [n, n.replace('FS_IOC_', 'FS_IOC32_')] : [n]));

/** name, value, note: aligned in columns. */
type Line = [string, string, string?];

function showText(shown: readonly Architecture[], only: ValueKind | undefined): string {
  const blocks = shown.map((a) => {
    const also = [a.family, ...a.aliases].filter((n) => n !== a.name);
    const sections: string[] = [`${a.name}  (arch indicator ${a.indicator}${also.length ? `; also ${also.join(', ')}` : ''})`];
    if (only === undefined || only === 'open') sections.push(section(`open flags: encoding '${a.openFlags.name}', octal`, openLines(a)));
    if (only === undefined || only === 'errno') sections.push(section(`errno: encoding '${a.errno.name}'`, errnoLines(a)));
    if (only === undefined || only === 'lock') {
      const lines = Object.entries(a.lockTypes.types).map(([name, type]): Line => [name, String(type)]);
      sections.push(section(`lock types: encoding '${a.lockTypes.name}'`, lines));
    }
    if (only === undefined || only === 'ioctl') {
      const lines = ioctlNames.map((n): Line => [n, format('ioctl', ioctlCommandValue(n, a)!)]);
      sections.push(section(`ioctl commands the kernel sends (fileattr): layout '${a.ioctl.name}', 64-bit forms`, lines));
    }
    return sections.join('\n');
  });
  return blocks.join('\n\n');
}

function section(title: string, lines: Line[]): string {
  const nameWidth = Math.max(...lines.map(([name]) => name.length));
  const valueWidth = Math.max(...lines.map(([, value]) => value.length));
  const body = lines.map(([name, value, note]) =>
    `    ${name.padEnd(nameWidth)}  ${note === undefined ? value : `${value.padEnd(valueWidth)}  ${note}`}`,
  );
  return [`  ${title}`, ...body].join('\n');
}

function openLines(a: Architecture): Line[] {
  const { accessModes, bits, composites, withoutCounterpart } = a.openFlags;
  const lines: Line[] = Object.entries(accessModes).map(([name, mode]): Line => [name, octal(mode)]);
  const single: [string, number, string?][] = [
    ...Object.entries(bits).map(([name, bit]): [string, number, string?] => {
      const outcome = withoutCounterpart[name];
      return [name, bit, outcome && `${outcome.action === 'drop' ? 'dropped' : 'refused'} where absent: ${outcome.reason}`];
    }),
    ...Object.entries(kernelOpenFlags).map(([name, k]): [string, number, string?] => [
      name,
      k.value,
      `kernel-internal, ${k.action === 'carry' ? 'carried' : 'dropped'}: ${k.reason}`,
    ]),
  ];
  for (const [name, bit, note] of single.sort((x, y) => x[1] - y[1])) lines.push([name, octal(bit), note]);
  for (const [name, parts] of Object.entries(composites)) {
    lines.push([name, octal(openFlagValue(name, a)!), `= ${parts.join('|')}`]);
  }
  return lines;
}

function errnoLines(a: Architecture): Line[] {
  const { numbers, aliases } = a.errno;
  const lines = Object.entries(numbers)
    .sort((x, y) => x[1] - y[1])
    .map(([name, n]): Line => [name, String(n)]);
  for (const [alias, primary] of Object.entries(aliases)) lines.push([alias, String(numbers[primary]), `= ${primary}`]);
  return lines;
}
