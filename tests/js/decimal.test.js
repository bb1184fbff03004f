// Decimal strings: formatted, compared and summed without ever becoming binary floats.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  compareDecimal,
  formatDecimal,
  formatRub,
  fromUnits,
  parseDecimal,
  sumDecimals,
  toUnits,
} from "../../src/delivery/web/js/lib/decimal.js";

const NNBSP = "\u202f";

test("formatDecimal groups thousands and uses a decimal comma, digits untouched", () => {
  assert.equal(formatDecimal("5617.16"), `5${NNBSP}617,16`);
  assert.equal(formatDecimal("1624772592.32"), `1${NNBSP}624${NNBSP}772${NNBSP}592,32`);
  assert.equal(formatDecimal("0.10"), "0,10");
  assert.equal(formatDecimal("-1000"), `-1${NNBSP}000`);
  assert.equal(formatDecimal("not a number"), "not a number");
  assert.equal(formatRub("0.00"), "0,00\u00a0₽");
});

test("parseDecimal reads plain non-negative decimals only", () => {
  assert.deepEqual(parseDecimal("0012.500"), { whole: "12", fraction: "5" });
  assert.deepEqual(parseDecimal(".5"), { whole: "", fraction: "5" });
  for (const bad of ["", ".", "-1", "1e3", "1.2.3", "1,5", " 1"]) assert.equal(parseDecimal(bad), null, bad);
});

test("compareDecimal orders by value, whatever the zeros", () => {
  const cmp = (a, b) => compareDecimal(parseDecimal(a), parseDecimal(b));
  assert.equal(cmp("1000", "1000.000"), 0);
  assert.equal(cmp("999.999", "1000"), -1);
  assert.equal(cmp("1000.001", "1000"), 1);
  assert.equal(cmp("0.1", "0.09"), 1);
  assert.equal(cmp("000", "0.0"), 0);
  // Past 2^53, where a JS number would call these equal.
  assert.equal(cmp("9007199254740993", "9007199254740992"), 1);
});

test("sums are exact to the kopeck where floats are not", () => {
  assert.equal(0.1 + 0.2 === 0.3, false); // the reason for all this
  assert.equal(sumDecimals(["0.10", "0.20"]), "0.30");
  assert.equal(sumDecimals(["812442296.16", "812330296.16"]), "1624772592.32");
  assert.equal(sumDecimals(["99999999999999999.99", "0.01"]), "100000000000000000.00");
  assert.equal(sumDecimals([]), "0.00");
});

test("units round-trip, and a value with too many places is refused", () => {
  assert.equal(toUnits("5617.16"), 561716n);
  assert.equal(toUnits("7"), 700n);
  assert.equal(toUnits("0.5"), 50n);
  assert.equal(fromUnits(5n), "0.05");
  assert.equal(fromUnits(-123456n), "-1234.56");
  assert.equal(fromUnits(1234n, 3), "1.234");
  assert.throws(() => toUnits("1.001"), RangeError);
  assert.throws(() => toUnits("1e3"), RangeError);
});
