import test from 'ava';
import { LEARN_FIRST, PROBE_EVERY, PollAdvisor } from '../../client/frontend/poll-advisor.ts';

const BUDGET = 50;
const SMALL = 4096 + 80; // a 4 KiB read: head plus reply room
const LARGE = (1 << 20) + 80; // a 1 MiB write

/** Submits and completes one request in slot 0; returns whether the advisor polled for it. */
function oneRequest(a: PollAdvisor, bytes: number, deviceUs: number): boolean {
  a.submitted(0, bytes);
  const polled = a.pollForCompletion;
  a.completed(0, deviceUs, true);
  return polled;
}

test('groups are log2 of the bytes moved', (t) => {
  t.is(PollAdvisor.group(0), 0);
  t.is(PollAdvisor.group(1), 1);
  t.is(PollAdvisor.group(4096), 13);
  t.is(PollAdvisor.group(4095), 12);
  t.is(PollAdvisor.group(LARGE), 21);
  t.is(PollAdvisor.group(0xffff_ffff), 32);
});

test('polls at first; stops for a size that keeps missing the budget; keeps polling for a small size that makes it', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  t.true(oneRequest(a, LARGE, 300), 'nothing learned yet: poll');
  let polledLarge = 0;
  for (let i = 0; i < 10; i++) polledLarge += oneRequest(a, LARGE, 300) ? 1 : 0;
  t.true(polledLarge < 10, 'stopped polling for 1 MiB writes');
  t.true(a.rateOf(PollAdvisor.group(LARGE)) < 0.5);
  for (let i = 0; i < 50; i++) t.true(oneRequest(a, SMALL, 20), 'small requests answered in 20 us stay polled for');
});

test('an unpolled slow answer is not held against a size (the wake-up is in it); a fast one counts for it', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  for (let i = 0; i < 20; i++) oneRequest(a, LARGE, 300);
  const g = PollAdvisor.group(LARGE);
  const low = a.rateOf(g);
  // Not polled for (and not a probe): slow answers change nothing.
  let unpolledSlow = 0;
  for (let i = 0; i < PROBE_EVERY - 2; i++) {
    a.submitted(0, LARGE);
    if (!a.pollForCompletion) {
      a.completed(0, 300, true);
      unpolledSlow++;
    } else a.completed(0, 300, true);
  }
  t.true(unpolledSlow > 0);
  t.true(a.rateOf(g) <= low);
  // The device got fast: answers within the budget raise the rate even unpolled, and polling resumes.
  let polledAgain = false;
  for (let i = 0; i < 20; i++) polledAgain = oneRequest(a, LARGE, 30) || polledAgain;
  t.true(a.rateOf(g) >= 0.5);
  t.true(polledAgain);
});

test('a size not polled for is probed once in PROBE_EVERY requests', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  for (let i = 0; i < 40; i++) oneRequest(a, LARGE, 300);
  let probes = 0;
  const n = PROBE_EVERY * 4;
  for (let i = 0; i < n; i++) probes += oneRequest(a, LARGE, 300) ? 1 : 0;
  t.is(probes, 4);
});

test('several requests in flight: polls while any of them is worth it; failures without an answer count for nothing', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  for (let i = 0; i < 40; i++) oneRequest(a, LARGE, 300);
  const g = PollAdvisor.group(LARGE);
  const rate = a.rateOf(g);
  a.submitted(1, LARGE);
  const largePolled = a.pollForCompletion;
  a.submitted(2, SMALL);
  t.true(a.pollForCompletion, 'a small request is in flight');
  a.completed(2, 10, true);
  t.is(a.pollForCompletion, largePolled);
  a.completed(1, 0, false);
  t.false(a.pollForCompletion);
  t.is(a.rateOf(g), rate);
});

test('the idle gap: polls for the next request while requests follow within the budget, not when they do not', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  t.false(a.pollForRequest, 'not idle yet');
  let now = 0;
  for (let i = 0; i < 10; i++) {
    a.idle(now);
    t.true(a.pollForRequest);
    now += 0.01; // 10 us later
    a.arrived(now);
    t.false(a.pollForRequest, 'busy again');
  }
  let polled = 0;
  for (let i = 0; i < 20; i++) {
    a.idle(now);
    polled += a.pollForRequest ? 1 : 0;
    now += 0.3; // 300 us later
    a.arrived(now);
  }
  t.true(polled < 20);
  t.true(a.idleRate < 0.5);
});

test('an untimed completion (a slow clock) ends the poll and teaches nothing', (t) => {
  const a = new PollAdvisor(4, BUDGET);
  a.submitted(0, SMALL);
  t.true(a.pollForCompletion);
  a.completed(0, 5000, false);
  t.false(a.pollForCompletion);
  t.is(a.rateOf(PollAdvisor.group(SMALL)), 1);
});

test("with sampled timing: a size's first LEARN_FIRST completions and its probes want timing, the rest do not", (t) => {
  const a = new PollAdvisor(4, BUDGET);
  for (let i = 0; i < LEARN_FIRST; i++) {
    a.submitted(0, LARGE);
    t.true(a.wantsTiming(0), `completion ${i} of a young size`);
    a.completed(0, 300, true);
  }
  t.true(a.rateOf(PollAdvisor.group(LARGE)) < 0.5, 'it learned not to poll for 1 MiB writes');
  let wanted = 0;
  let probes = 0;
  for (let i = 0; i < 4 * PROBE_EVERY; i++) {
    a.submitted(0, LARGE);
    if (a.pollForCompletion) probes++;
    if (a.wantsTiming(0)) wanted++;
    a.completed(0, 300, a.wantsTiming(0));
  }
  t.is(probes, 4, 'one probe in PROBE_EVERY');
  t.is(wanted, probes, 'only the probes want timing');
});
