// Decimal strings, as the API sends them ("5617.16"), handled as strings or as BigInt counts of their
// smallest unit: money never becomes a binary float, so every figure shown is the server's to the kopeck.

export const GROUP_SEPARATOR = "\u202f"; // a narrow no-break space between thousands

export function groupDigits(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, GROUP_SEPARATOR);
}

/** "5617.16" -> "5 617,16": string work only, the digits are the server's. */
export function formatDecimal(text) {
  const value = String(text);
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(value);
  if (!match) return value;
  const [, sign, whole, fraction] = match;
  return sign + groupDigits(whole) + (fraction ? "," + fraction : "");
}

/** "0012.500" -> {whole: "12", fraction: "5"}; null when it is not a plain non-negative decimal. */
export function parseDecimal(text) {
  const match = /^(\d*)(?:\.(\d*))?$/.exec(String(text));
  if (!match || (match[1] === "" && !match[2])) return null;
  return { whole: match[1].replace(/^0+/, ""), fraction: (match[2] || "").replace(/0+$/, "") };
}

/** -1, 0 or 1, as a is below, equal to or above b (both from parseDecimal). */
export function compareDecimal(a, b) {
  if (a.whole.length !== b.whole.length) return a.whole.length < b.whole.length ? -1 : 1;
  if (a.whole !== b.whole) return a.whole < b.whole ? -1 : 1;
  const width = Math.max(a.fraction.length, b.fraction.length);
  const fa = a.fraction.padEnd(width, "0");
  const fb = b.fraction.padEnd(width, "0");
  return fa === fb ? 0 : fa < fb ? -1 : 1;
}

export const isZero = (d) => d.whole === "" && d.fraction === "";

/** "5617.16" -> 561716n (with places = 2); throws on anything but a plain decimal with at most `places`. */
export function toUnits(text, places = 2) {
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(text));
  if (!match || (match[3] || "").length > places) throw new RangeError(`not a decimal with ${places} places: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  const units = BigInt(whole + fraction.padEnd(places, "0"));
  return sign ? -units : units;
}

/** 561716n -> "5617.16" (with places = 2). */
export function fromUnits(units, places = 2) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(places + 1, "0");
  const whole = digits.slice(0, digits.length - places);
  const fraction = digits.slice(digits.length - places);
  return (negative ? "-" : "") + whole + (places ? "." + fraction : "");
}

/** The exact sum of decimal strings with at most `places` places, as such a string. */
export function sumDecimals(values, places = 2) {
  return fromUnits(values.reduce((sum, value) => sum + toUnits(value, places), 0n), places);
}

/** "5617.16" -> "5 617,16 ₽". */
export function formatRub(text) {
  return `${formatDecimal(text)}\u00a0₽`;
}
