// The daily-costs chart's arithmetic, with no browser: days stacked by type, a "nice" value axis, and which
// day labels fit. Money stays exact (BigInt kopecks); only the geometry becomes a JS number.

import { fromUnits, groupDigits, toUnits } from "./decimal.js";

export const MAX_RANGE_DAYS = 366;
const DAY_MS = 86_400_000;

/** The API's days as stacks: each type's segment from its base up, in the order of the types. */
export function stackDays(days) {
  return days.map((day) => {
    let base = 0n;
    const segments = day.totals.map((total) => {
      const units = toUnits(total.total_cost_rub);
      const segment = { type: total.type, packages: total.packages, total: total.total_cost_rub, from: base };
      base += units;
      return { ...segment, to: base };
    });
    const packages = day.totals.reduce((sum, total) => sum + total.packages, 0);
    return { date: day.date, segments, units: base, total: fromUnits(base), packages };
  });
}

/** Per type, and over all, the sums of a range: {byType: [{type, packages, total}], packages, total}. */
export function rangeTotals(days) {
  const byType = new Map();
  for (const day of days) {
    for (const t of day.totals) {
      const entry = byType.get(t.type.id) || { type: t.type, packages: 0, units: 0n };
      entry.packages += t.packages;
      entry.units += toUnits(t.total_cost_rub);
      byType.set(t.type.id, entry);
    }
  }
  const entries = [...byType.values()];
  const units = entries.reduce((sum, e) => sum + e.units, 0n);
  return {
    byType: entries.map((e) => ({ type: e.type, packages: e.packages, total: fromUnits(e.units) })),
    packages: entries.reduce((sum, e) => sum + e.packages, 0),
    total: fromUnits(units),
  };
}

/**
 * A value axis from 0 that holds `max` (kopecks) in about `count` steps of 1, 2 or 5 × 10^k whole roubles:
 * {top, step, ticks}, all BigInt kopecks.
 */
export function niceAxis(max, count = 5) {
  const rouble = 100n;
  const raw = max <= 0n ? rouble : (max + BigInt(count) - 1n) / BigInt(count);
  let magnitude = rouble;
  while (magnitude * 10n <= raw) magnitude *= 10n;
  const step = [1n, 2n, 5n, 10n].map((m) => m * magnitude).find((s) => s >= raw);
  const top = max <= 0n ? step * BigInt(count) : ((max + step - 1n) / step) * step;
  const ticks = [];
  for (let tick = 0n; tick <= top; tick += step) ticks.push(tick);
  return { top, step, ticks };
}

/** Where `units` reaches on an axis up to `top`, from 0 to 1: a number for drawing, never for money. */
export function fraction(units, top) {
  if (top <= 0n) return 0;
  return Number((units * 1_000_000n) / top) / 1_000_000;
}

/** A tick's label: whole roubles, shortened to тыс./млн/млрд when exact ("1,5 млн ₽"). */
export function tickLabel(units) {
  const roubles = units / 100n;
  for (const [power, word] of [[9, "млрд"], [6, "млн"], [3, "тыс."]]) {
    const scale = 10n ** BigInt(power);
    if (roubles >= scale) {
      const text = fromUnits(roubles, power).replace(/\.?0+$/, "").replace(".", ",");
      return `${groupDigits(text.split(",")[0])}${text.includes(",") ? "," + text.split(",")[1] : ""}\u00a0${word}\u00a0₽`;
    }
  }
  return `${roubles}\u00a0₽`;
}

/** Print every n-th day's label, so that labels of `labelWidth` px fit in `width` px. */
export function labelEvery(dayCount, width, labelWidth = 44) {
  const fit = Math.max(1, Math.floor(width / labelWidth));
  return Math.max(1, Math.ceil(dayCount / fit));
}

/** An ISO day `n` days after (or before) another, in UTC. */
export function addDays(iso, n) {
  return new Date(Date.parse(`${iso}T00:00:00Z`) + n * DAY_MS).toISOString().slice(0, 10);
}

/** How many days from `from` to `to`, both included. */
export function dayCount(from, to) {
  return Math.round((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / DAY_MS) + 1;
}

/** The last `n` days up to today (UTC), both included: {from, to}. */
export function lastDays(n, now = new Date()) {
  const to = now.toISOString().slice(0, 10);
  return { from: addDays(to, 1 - n), to };
}

/** Why a range cannot be asked for, in Russian; null when it can. */
export function rangeProblem(from, to) {
  const iso = /^\d{4}-\d{2}-\d{2}$/;
  if (!iso.test(from) || Number.isNaN(Date.parse(from))) return { field: "from", message: "Укажите дату начала" };
  if (!iso.test(to) || Number.isNaN(Date.parse(to))) return { field: "to", message: "Укажите дату конца" };
  if (to < from) return { field: "to", message: "Конец периода раньше начала" };
  if (dayCount(from, to) > MAX_RANGE_DAYS) return { field: "to", message: `Период — не больше ${MAX_RANGE_DAYS} дней` };
  return null;
}
