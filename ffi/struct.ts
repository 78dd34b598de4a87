/**
 * Wire structs declared once: field names and C types in declaration order.
 * Offsets and size follow C natural alignment (as the FUSE headers rely on:
 * every struct is padded to 64 bits) and are checked against the size the
 * header documents, so a typo in a declaration fails at load time, not on the wire.
 * Everything is little-endian: virtio 1.x is LE, and FUSE over virtio-fs is
 * carried in the guest's byte order, which for every architecture we target is LE.
 */

export type Scalar = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 'i64';
export type FieldType = Scalar | Struct<any> | { readonly array: Scalar; readonly count: number };

type ScalarValue<S extends Scalar> = S extends 'u64' | 'i64' ? bigint : number;
type FieldValue<F> = F extends Scalar
  ? ScalarValue<F>
  : F extends Struct<infer V>
    ? V
    : F extends { array: infer S extends Scalar }
      ? ScalarValue<S>[]
      : never;
export type StructValue<D extends Record<string, FieldType>> = { -readonly [K in keyof D]: FieldValue<D[K]> };
/** What encode() accepts: any field may be left out (written as zero), nested structs too. */
export type Fill<V> = { [K in keyof V]?: V[K] extends number | bigint | readonly unknown[] ? V[K] : Fill<V[K]> };

const scalarSize: Record<Scalar, number> = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8, i64: 8 };

export interface Field {
  readonly name: string;
  readonly type: FieldType;
  readonly offset: number;
  readonly size: number;
}

function isScalar(t: FieldType): t is Scalar {
  return typeof t === 'string';
}

function sizeAndAlign(t: FieldType): [size: number, align: number] {
  if (isScalar(t)) return [scalarSize[t], scalarSize[t]];
  if (t instanceof Struct) return [t.size, t.align];
  return [scalarSize[t.array] * t.count, scalarSize[t.array]];
}

function readScalar(view: DataView, at: number, t: Scalar): number | bigint {
  switch (t) {
    case 'u8':
      return view.getUint8(at);
    case 'u16':
      return view.getUint16(at, true);
    case 'u32':
      return view.getUint32(at, true);
    case 'i32':
      return view.getInt32(at, true);
    case 'u64':
      return view.getBigUint64(at, true);
    case 'i64':
      return view.getBigInt64(at, true);
  }
}

function writeScalar(view: DataView, at: number, t: Scalar, v: number | bigint): void {
  switch (t) {
    case 'u8':
      return view.setUint8(at, Number(v));
    case 'u16':
      return view.setUint16(at, Number(v), true);
    case 'u32':
      return view.setUint32(at, Number(v), true);
    case 'i32':
      return view.setInt32(at, Number(v), true);
    case 'u64':
      return view.setBigUint64(at, BigInt(v), true);
    case 'i64':
      return view.setBigInt64(at, BigInt(v), true);
  }
}

export class Struct<V> {
  readonly fields: readonly Field[];
  readonly size: number;
  readonly align: number;
  private readonly byName = new Map<string, Field>();

  constructor(
    readonly name: string,
    declaration: Record<string, FieldType>,
    documentedSize: number,
  ) {
    const fields: Field[] = [];
    let offset = 0;
    let align = 1;
    for (const [fieldName, type] of Object.entries(declaration)) {
      const [size, a] = sizeAndAlign(type);
      offset = Math.ceil(offset / a) * a;
      const field = { name: fieldName, type, offset, size };
      fields.push(field);
      this.byName.set(fieldName, field);
      offset += size;
      align = Math.max(align, a);
    }
    this.size = Math.ceil(offset / align) * align;
    this.align = align;
    this.fields = fields;
    if (this.size !== documentedSize) {
      throw new Error(`struct ${name}: declared fields make ${this.size} bytes, the header says ${documentedSize}`);
    }
  }

  /** The field's declaration (offset, size); throws for a name the struct does not have. */
  field(name: keyof V & string): Field {
    const f = this.byName.get(name);
    if (!f) throw new Error(`struct ${this.name} has no field ${name}`);
    return f;
  }

  offsetOf(name: keyof V & string): number {
    return this.field(name).offset;
  }

  /** Reads the whole struct at `at`. The caller has checked that `size` bytes are there. */
  decode(view: DataView, at = 0): V {
    const out: Record<string, unknown> = {};
    for (const f of this.fields) out[f.name] = this.decodeField(view, at + f.offset, f.type);
    return out as V;
  }

  /** Writes the struct at `at`; absent fields are written as zero (padding included). */
  encode(view: DataView, at: number, value: Fill<V>): void {
    const values = value as Record<string, unknown>;
    for (const f of this.fields) this.encodeField(view, at + f.offset, f.type, values[f.name]);
  }

  /** Encodes into a new buffer of exactly `size` bytes (tests, cold paths). */
  toBytes(value: Fill<V>): Uint8Array {
    const bytes = new Uint8Array(this.size);
    this.encode(new DataView(bytes.buffer), 0, value);
    return bytes;
  }

  /** Reads one scalar field without decoding the rest (hot paths). */
  get<K extends keyof V & string>(view: DataView, at: number, name: K): V[K] {
    const f = this.field(name);
    if (!isScalar(f.type)) throw new Error(`${this.name}.${name} is not a scalar`);
    return readScalar(view, at + f.offset, f.type) as V[K];
  }

  /** Writes one scalar field in place (hot paths: translation, header fix-ups). */
  set<K extends keyof V & string>(view: DataView, at: number, name: K, v: V[K]): void {
    const f = this.field(name);
    if (!isScalar(f.type)) throw new Error(`${this.name}.${name} is not a scalar`);
    writeScalar(view, at + f.offset, f.type, v as number | bigint);
  }

  private decodeField(view: DataView, at: number, t: FieldType): unknown {
    if (isScalar(t)) return readScalar(view, at, t);
    if (t instanceof Struct) return t.decode(view, at);
    const step = scalarSize[t.array];
    return Array.from({ length: t.count }, (_, i) => readScalar(view, at + i * step, t.array));
  }

  private encodeField(view: DataView, at: number, t: FieldType, v: unknown): void {
    if (isScalar(t)) return writeScalar(view, at, t, (v as number | bigint | undefined) ?? 0);
    if (t instanceof Struct) return t.encode(view, at, (v ?? {}) as object);
    const step = scalarSize[t.array];
    const items = (v as (number | bigint)[] | undefined) ?? [];
    for (let i = 0; i < t.count; i++) writeScalar(view, at + i * step, t.array, items[i] ?? 0);
  }
}

/** Declares a struct; `documentedSize` is sizeof() from the C header. */
export function struct<const D extends Record<string, FieldType>>(
  name: string,
  declaration: D,
  documentedSize: number,
): Struct<StructValue<D>> {
  return new Struct<StructValue<D>>(name, declaration, documentedSize);
}

export const array = <S extends Scalar>(of: S, count: number) => ({ array: of, count }) as const;
