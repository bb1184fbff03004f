// The registration form's checks, with the bounds the server serves (GET /web/package-rules.json).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  checkId,
  checkName,
  checkNumber,
  formatBound,
  splitErrors,
  translate,
  validatePackage,
} from "../../src/delivery/web/js/lib/validation.js";

// What the server serves today; tests/test_web.py checks that the served rules are the API's.
const RULES = {
  name: { min_length: 1, max_length: 255 },
  weight_kg: { gt: "0", le: "1000", decimal_places: 3 },
  type_id: { ge: "1", le: "2147483647" },
  content_value_usd: { ge: "0", le: "1000000000", decimal_places: 2 },
};

test("weights: above 0, at most 1000, at most 3 places, as people type them", () => {
  const check = (raw) => checkNumber(raw, RULES.weight_kg);
  assert.deepEqual(check("1,25"), { value: "1.25" });
  assert.deepEqual(check(" 1 000 "), { value: "1000" });
  assert.deepEqual(check("0,001"), { value: "0.001" });
  assert.deepEqual(check("1000.000"), { value: "1000.000" });
  assert.deepEqual(check(""), { error: "Заполните это поле" });
  assert.deepEqual(check("0"), { error: "Должно быть больше 0" });
  assert.deepEqual(check("-1"), { error: "Должно быть больше 0" });
  assert.deepEqual(check("тяжёлая"), { error: "Введите число, например 1,25" });
  assert.deepEqual(check("1,2345"), { error: "Не больше 3 знаков после запятой" });
  assert.deepEqual(check("1000,001"), { error: "Должно быть не больше 1000" });
});

test("values: 0 to 1 000 000 000, at most 2 places", () => {
  const check = (raw) => checkNumber(raw, RULES.content_value_usd);
  assert.deepEqual(check("0"), { value: "0" });
  assert.deepEqual(check("999999999.99"), { value: "999999999.99" });
  assert.deepEqual(check("-0.01"), { error: "Не может быть отрицательной" });
  assert.deepEqual(check("1000000000.01"), { error: "Должно быть не больше 1\u202f000\u202f000\u202f000" });
  assert.deepEqual(check("10,555"), { error: "Не больше 2 знаков после запятой" });
});

test("other bounds the server might serve are applied as they come", () => {
  assert.deepEqual(checkNumber("2", { ge: "2.5" }), { error: "Должно быть не меньше 2,5" });
  assert.deepEqual(checkNumber("-3", { ge: "1" }), { error: "Должно быть не меньше 1" });
  assert.deepEqual(checkNumber("1.5", { decimal_places: 1 }), { value: "1.5" });
  assert.deepEqual(checkNumber("1.55", { decimal_places: 1 }), { error: "Не больше 1 знака после запятой" });
  assert.equal(formatBound("1000"), "1000");
  assert.equal(formatBound("12345.5"), "12\u202f345,5");
});

test("names are trimmed and counted in characters, as the server counts them", () => {
  assert.deepEqual(checkName("  Куртка ", RULES.name), { value: "Куртка" });
  assert.deepEqual(checkName("   ", RULES.name), { error: "Укажите название" });
  assert.deepEqual(checkName("😀".repeat(255), RULES.name), { value: "😀".repeat(255) });
  assert.deepEqual(checkName("я".repeat(256), RULES.name), { error: "Не длиннее 255 символов (сейчас 256)" });
});

test("the whole form: the body the API wants, or every error at once", () => {
  const good = validatePackage(
    { name: " Куртка ", weight_kg: "1,25", type_id: "1", content_value_usd: "120" },
    RULES,
  );
  assert.deepEqual(good, {
    body: { name: "Куртка", weight_kg: "1.25", type_id: 1, content_value_usd: "120" },
    errors: {},
  });
  const bad = validatePackage({ name: "", weight_kg: "0", type_id: "", content_value_usd: "x" }, RULES);
  assert.deepEqual(Object.keys(bad.errors).sort(), ["content_value_usd", "name", "type_id", "weight_kg"]);
});

test("ids typed by an operator: positive integers up to the column's bound, kept as digits", () => {
  const max = "9223372036854775807";
  assert.equal(checkId(" 42 ", max), "42");
  assert.equal(checkId("007", max), "7");
  assert.equal(checkId(max, max), max);
  for (const bad of ["0", "-1", "1.5", "", "abc", "9223372036854775808"]) assert.equal(checkId(bad, max), null, bad);
});

test("the server's 422 errors in Russian, at their fields", () => {
  const detail = [
    { type: "less_than_equal", loc: ["body", "weight_kg"], msg: "…", ctx: { le: "1000" } },
    { type: "decimal_max_places", loc: ["body", "content_value_usd"], msg: "…", ctx: { decimal_places: 2 } },
    { type: "value_error", loc: ["body", "type_id"], msg: "no such type" },
    { type: "extra_forbidden", loc: ["body", "colour"], msg: "…" },
  ];
  const { byField, other } = splitErrors(detail, ["name", "type_id", "weight_kg", "content_value_usd"]);
  assert.deepEqual(byField, {
    weight_kg: "Должно быть не больше 1000",
    content_value_usd: "Не больше 2 знаков после запятой",
    type_id: "Такого типа больше нет. Обновите страницу и выберите тип из списка.",
  });
  assert.deepEqual(other, ["Сервер не знает поле «colour»"]);
  assert.equal(translate({ type: "something_new", msg: "as the server says" }, "name"), "as the server says");
});
