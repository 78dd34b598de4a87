import test from 'ava';
import { readFileSync } from 'node:fs';
import { TRANSLATED_FIELDS } from '../../client/fuse/wire-translation.ts';
import { FIELD_VERDICTS, declaredFields, declaredStructs } from '../../client/protocol/field-verdicts.ts';
import { DOC, withGeneratedTable } from '../../scripts/docs-fields.ts';

test('every declared wire field has a verdict, and every verdict names a declared field', (t) => {
  const fields = declaredFields();
  t.true(declaredStructs().length >= 60, `${declaredStructs().length} structs declared`);
  t.deepEqual(fields.filter((f) => !(f in FIELD_VERDICTS)), [], 'fields without a verdict');
  t.deepEqual(Object.keys(FIELD_VERDICTS).filter((f) => !fields.includes(f)), [], 'verdicts for fields not declared');
});

test('a nested struct field points at a declared struct of that type', (t) => {
  const structs = new Map(declaredStructs().map((s) => [s.name, s]));
  for (const s of declaredStructs()) {
    for (const f of s.fields) {
      const verdict = FIELD_VERDICTS[`${s.name}.${f.name}`]!;
      const isStruct = typeof f.type === 'object' && 'fields' in f.type;
      t.is(verdict.arch === 'struct', isStruct, `${s.name}.${f.name}`);
      if (isStruct) t.is(verdict.why, `see ${(f.type as { name: string }).name}`, `${s.name}.${f.name}`);
      if (isStruct) t.true(structs.has((f.type as { name: string }).name));
    }
  }
});

test('the fields judged translated are exactly the ones the client translates', (t) => {
  const translatedByVerdict = Object.entries(FIELD_VERDICTS)
    .filter(([, v]) => v.arch === 'open-flags' || v.arch === 'errno' || v.arch === 'lock-type' || v.arch === 'ioctl-cmd')
    .map(([f]) => f)
    .sort();
  t.deepEqual(translatedByVerdict, [...TRANSLATED_FIELDS].sort());
});

test('docs/arch-negotiation.md carries the generated field table (npm run docs:fields)', (t) => {
  const text = readFileSync(DOC, 'utf8');
  t.is(text, withGeneratedTable(text), 'the document\'s table is stale: run npm run docs:fields');
});
