import test from 'ava';
import {
  MAX_MEASURED_BUDGET_US,
  MIN_MEASURED_BUDGET_US,
  TIME_ONE_IN,
  measureClockReadUs,
  measureWakeUpUs,
  pollBudgetFor,
  timeEveryFor,
} from '../../client/frontend/machine-costs.ts';
import { OpStats } from '../../client/frontend/op-stats.ts';
import { Opcode } from '../../client/protocol/index.ts';

test('the poll budget is the wake-up, within its bounds', (t) => {
  t.is(pollBudgetFor(38.6), MIN_MEASURED_BUDGET_US, 'never under the fixed budget of before');
  t.is(MIN_MEASURED_BUDGET_US, 50);
  t.is(pollBudgetFor(212.4), 212);
  t.is(pollBudgetFor(0), MIN_MEASURED_BUDGET_US);
  t.is(pollBudgetFor(5000), MAX_MEASURED_BUDGET_US);
});

test('every request is timed where a clock read is cheap, one in 16 where it is a system call', (t) => {
  t.is(timeEveryFor(0.05), 1);
  t.is(timeEveryFor(0.99), 1);
  t.is(timeEveryFor(1), TIME_ONE_IN);
  t.is(timeEveryFor(8.5), TIME_ONE_IN);
});

test('measurements: a wake-up costs more than nothing and less than the sleep; a clock read costs something', (t) => {
  const started = performance.now();
  const wakeUp = measureWakeUpUs(3);
  const took = performance.now() - started;
  t.log(`wake-up ${wakeUp.toFixed(1)} us; clock read ${measureClockReadUs().toFixed(3)} us`);
  t.true(wakeUp >= 0 && wakeUp < 1000 * took, `wake-up ${wakeUp} us, three sleeps took ${took} ms`);
  t.true(took >= 3, 'three 1 ms sleeps');
  t.true(measureClockReadUs() > 0);
});

test('op stats: untimed requests are counted; percentiles come from the timed ones only', (t) => {
  const stats = new OpStats();
  for (let i = 0; i < 30; i++) stats.count(Opcode.READ, i === 0);
  stats.record(Opcode.READ, 2, false);
  stats.record(Opcode.READ, 4, true);
  const [read] = stats.summary();
  t.is(read!.opcode, 'READ');
  t.is(read!.count, 32);
  t.is(read!.errors, 2);
  t.is(read!.p50Ms, 4, 'two latencies, 2 and 4: none of the untimed ones counts as 0');
  t.is(read!.p90Ms, 4);
  t.is(stats.total(), 32);
});
