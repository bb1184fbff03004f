// The age of the oldest dead letter, as the operators' backlog says it.

import { test } from "node:test";
import assert from "node:assert/strict";

import { formatAge } from "../../src/delivery/web/js/lib/format.js";

test("an age is said in the largest whole unit that fits", () => {
  assert.equal(formatAge(0), "меньше минуты");
  assert.equal(formatAge(59.9), "меньше минуты");
  assert.equal(formatAge(60), "1 мин");
  assert.equal(formatAge(3599), "59 мин");
  assert.equal(formatAge(2 * 3600 + 5 * 60), "2 ч");
  assert.equal(formatAge(86400), "1 день");
  assert.equal(formatAge(3 * 86400), "3 дня");
  assert.equal(formatAge(11 * 86400), "11 дней");
});

test("an age that is not a number is said as the shortest", () => {
  assert.equal(formatAge(Number.NaN), "меньше минуты");
});
