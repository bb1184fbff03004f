// The registration form's checks, made before sending with the server's own bounds (GET /web/package-rules.json,
// read from the schema the API validates with), and the server's 422 errors put into Russian.

import { compareDecimal, formatDecimal, parseDecimal } from "./decimal.js";
import { plural } from "./format.js";

export const FIELDS = ["name", "type_id", "weight_kg", "content_value_usd"]; // in the order of the form

/** "1 000,5" -> "1000.5": what people type, as the API reads it. */
export function normalizeNumber(raw) {
  return String(raw).trim().replace(/\s+/g, "").replace(",", ".");
}

function bound(text) {
  return parseDecimal(String(text));
}

/** A bound in a message: "1000", "1 000 000 000" (Russian groups the thousands of five digits and more). */
export function formatBound(text) {
  const value = String(text);
  return /^\d{5}/.test(value) ? formatDecimal(value) : value.replace(".", ",");
}

/** A decimal field against its rule ({gt | ge, le, decimal_places}): {value} as a string, or {error}. */
export function checkNumber(raw, rule) {
  const text = normalizeNumber(raw);
  if (text === "") return { error: "Заполните это поле" };
  const lowerIsZero = (rule.ge != null && bound(rule.ge).whole === "" && bound(rule.ge).fraction === "");
  if (text.startsWith("-")) {
    if (rule.gt != null) return { error: `Должно быть больше ${formatBound(rule.gt)}` };
    return { error: lowerIsZero ? "Не может быть отрицательной" : `Должно быть не меньше ${formatBound(rule.ge)}` };
  }
  const value = parseDecimal(text);
  if (!value) return { error: "Введите число, например 1,25" };
  if (rule.gt != null && compareDecimal(value, bound(rule.gt)) <= 0) {
    return { error: `Должно быть больше ${formatBound(rule.gt)}` };
  }
  if (rule.ge != null && compareDecimal(value, bound(rule.ge)) < 0) {
    return { error: `Должно быть не меньше ${formatBound(rule.ge)}` };
  }
  if (rule.le != null && compareDecimal(value, bound(rule.le)) > 0) {
    return { error: `Должно быть не больше ${formatBound(rule.le)}` };
  }
  const places = rule.decimal_places;
  if (places != null && value.fraction.length > places) {
    return { error: `Не больше ${places} ${plural(places, "знака", "знаков", "знаков")} после запятой` };
  }
  return { value: text };
}

/** The name against its rule ({min_length, max_length}), trimmed as the server trims it. */
export function checkName(raw, rule) {
  const name = String(raw).trim();
  const length = Array.from(name).length; // characters, as the server counts them
  if (length < (rule.min_length ?? 1)) return { error: "Укажите название" };
  if (rule.max_length != null && length > rule.max_length) {
    return { error: `Не длиннее ${rule.max_length} символов (сейчас ${length})` };
  }
  return { value: name };
}

/** The form's raw values as the API wants them (numbers as strings), and the errors per field. */
export function validatePackage(values, rules) {
  const errors = {};
  const name = checkName(values.name, rules.name);
  if (name.error) errors.name = name.error;
  const weight = checkNumber(values.weight_kg, rules.weight_kg);
  if (weight.error) errors.weight_kg = weight.error;
  const value = checkNumber(values.content_value_usd, rules.content_value_usd);
  if (value.error) errors.content_value_usd = value.error;
  const typeId = String(values.type_id);
  if (!/^\d+$/.test(typeId)) errors.type_id = "Выберите тип";
  const body = { name: name.value, weight_kg: weight.value, type_id: Number(typeId), content_value_usd: value.value };
  return { body, errors };
}

/** A positive integer id typed by a person, as its digits; null unless 1 <= id <= max (a decimal string). */
export function checkId(raw, max) {
  const text = String(raw).trim();
  if (!/^\d+$/.test(text)) return null;
  const value = parseDecimal(text);
  if (value.whole === "" || compareDecimal(value, parseDecimal(max)) > 0) return null;
  return value.whole;
}

/** A Russian message for one of FastAPI's 422 errors; the server's own text when we do not know it. */
export function translate(error, field) {
  const ctx = error.ctx || {};
  const num = (x) => (x === undefined || x === null ? null : formatBound(String(x)));
  switch (error.type) {
    case "missing":
      return "Заполните это поле";
    case "string_too_short":
      return field === "name" ? "Укажите название" : "Слишком короткое значение";
    case "string_too_long":
      return num(ctx.max_length) ? `Не длиннее ${num(ctx.max_length)} символов` : "Слишком длинное значение";
    case "string_type":
      return "Введите текст";
    case "greater_than":
      return num(ctx.gt) ? `Должно быть больше ${num(ctx.gt)}` : error.msg;
    case "greater_than_equal":
      return num(ctx.ge) ? `Должно быть не меньше ${num(ctx.ge)}` : error.msg;
    case "less_than_equal":
      return num(ctx.le) ? `Должно быть не больше ${num(ctx.le)}` : error.msg;
    case "decimal_max_places":
      return num(ctx.decimal_places) ? `Не больше ${num(ctx.decimal_places)} знаков после запятой` : error.msg;
    case "decimal_parsing":
    case "decimal_type":
    case "finite_number":
      return "Введите число, например 1,25";
    case "int_type":
    case "int_parsing":
      return field === "type_id" ? "Выберите тип из списка" : "Введите целое число";
    case "extra_forbidden":
      return `Сервер не знает поле «${field}»`;
    case "value_error":
      if (field === "type_id") return "Такого типа больше нет. Обновите страницу и выберите тип из списка.";
      return `Недопустимое значение: ${error.msg}`;
    default:
      return error.msg || "Недопустимое значение";
  }
}

/** FastAPI's 422 detail split into {byField: {field: message}, other: [message]} for the given fields. */
export function splitErrors(detail, fields) {
  const byField = {};
  const other = [];
  for (const error of Array.isArray(detail) ? detail : []) {
    const loc = Array.isArray(error.loc) ? error.loc : [];
    const field = loc[0] === "body" ? loc[1] : undefined;
    if (fields.includes(field)) {
      if (!(field in byField)) byField[field] = translate(error, field);
    } else {
      other.push(translate(error, field === undefined ? "" : String(field)));
    }
  }
  return { byField, other };
}
