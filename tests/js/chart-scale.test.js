// The chart's scales: exact stacks, a nice axis, labels that fit, and the ranges one may ask for.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addDays,
  dayCount,
  fraction,
  labelEvery,
  lastDays,
  niceAxis,
  rangeProblem,
  rangeTotals,
  stackDays,
  tickLabel,
} from "../../src/delivery/web/js/lib/chart-scale.js";

const TYPES = [
  { id: 1, name: "clothes" },
  { id: 2, name: "electronics" },
  { id: 3, name: "misc" },
];
const day = (date, ...figures) => ({
  date,
  totals: TYPES.map((type, i) => ({ type, packages: figures[i][0], total_cost_rub: figures[i][1] })),
});
const DAYS = [
  day("2025-06-26", [3, "0.10"], [2, "0.20"], [0, "0.00"]),
  day("2025-06-27", [0, "0.00"], [2, "1624772592.32"], [3, "3113.93"]),
];

test("stacks are exact sums of the day's types, in type order", () => {
  const [first, second] = stackDays(DAYS);
  assert.equal(first.total, "0.30"); // not 0.30000000000000004
  assert.equal(first.packages, 5);
  assert.deepEqual(first.segments.map((s) => [s.from, s.to]), [[0n, 10n], [10n, 30n], [30n, 30n]]);
  assert.equal(second.total, "1624775706.25");
  assert.equal(second.units, 162477570625n);
});

test("the range's totals per type and over all", () => {
  const totals = rangeTotals(DAYS);
  assert.deepEqual(totals.byType.map((t) => [t.type.id, t.packages, t.total]), [
    [1, 3, "0.10"],
    [2, 4, "1624772592.52"],
    [3, 3, "3113.93"],
  ]);
  assert.equal(totals.packages, 10);
  assert.equal(totals.total, "1624775706.55");
});

test("the axis holds the highest bar in steps of 1, 2 or 5 times a power of ten roubles", () => {
  assert.deepEqual(niceAxis(123456n), { top: 150000n, step: 50000n, ticks: [0n, 50000n, 100000n, 150000n] });
  const big = niceAxis(162477570625n);
  assert.equal(big.step, 50000000000n); // 500 млн ₽
  assert.equal(big.top, 200000000000n);
  assert.ok(big.top >= 162477570625n);
  const empty = niceAxis(0n);
  assert.equal(empty.top > 0n, true);
  assert.equal(niceAxis(30n).step, 100n); // never below a rouble
  for (const max of [1n, 99n, 100n, 101n, 999999n, 10n ** 20n]) {
    const axis = niceAxis(max);
    assert.ok(axis.top >= max && axis.ticks.length >= 2 && axis.ticks.length <= 11, String(max));
    assert.equal(axis.step % 100n, 0n);
  }
});

test("geometry: a fraction of the axis", () => {
  assert.equal(fraction(50n, 200n), 0.25);
  assert.equal(fraction(0n, 200n), 0);
  assert.equal(fraction(10n, 0n), 0);
  assert.equal(fraction(10n ** 20n, 10n ** 20n), 1);
});

test("tick labels: whole roubles, shortened only when exact", () => {
  assert.equal(tickLabel(0n), "0\u00a0₽");
  assert.equal(tickLabel(50000n), "500\u00a0₽");
  assert.equal(tickLabel(150000n), "1,5\u00a0тыс.\u00a0₽");
  assert.equal(tickLabel(50000000000n), "500\u00a0млн\u00a0₽");
  assert.equal(tickLabel(200000000000n), "2\u00a0млрд\u00a0₽");
  assert.equal(tickLabel(500000000000000n), "5\u202f000\u00a0млрд\u00a0₽");
});

test("day labels thin out to fit", () => {
  assert.equal(labelEvery(30, 1400), 1);
  assert.equal(labelEvery(30, 1200), 2);
  assert.equal(labelEvery(30, 300), 5);
  assert.equal(labelEvery(366, 300), 61); // 6 labels fit
  assert.equal(labelEvery(1, 10), 1);
});

test("days and ranges, in UTC", () => {
  assert.equal(addDays("2024-02-28", 1), "2024-02-29");
  assert.equal(addDays("2025-01-01", -1), "2024-12-31");
  assert.equal(dayCount("2024-01-01", "2024-12-31"), 366);
  assert.deepEqual(lastDays(30, new Date("2025-06-30T23:59:59Z")), { from: "2025-06-01", to: "2025-06-30" });
  assert.equal(rangeProblem("2024-01-01", "2024-12-31"), null);
  assert.deepEqual(rangeProblem("2024-01-01", "2025-01-01"), { field: "to", message: "Период — не больше 366 дней" });
  assert.deepEqual(rangeProblem("2025-06-02", "2025-06-01"), { field: "to", message: "Конец периода раньше начала" });
  assert.equal(rangeProblem("", "2025-06-01").field, "from");
});
