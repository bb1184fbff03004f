// Russian wording shared by the pages: plurals, dates, type names.

const TYPE_LABELS = { clothes: "Одежда", electronics: "Электроника", misc: "Разное" };

export function typeLabel(type) {
  return TYPE_LABELS[type.name] || type.name;
}

/** The form of a Russian noun after the number n: plural(5, "посылка", "посылки", "посылок"). */
export function plural(n, one, few, many) {
  const mod10 = n % 10;
  const mod100 = n % 100;
  if (mod10 === 1 && mod100 !== 11) return one;
  if (mod10 >= 2 && mod10 <= 4 && (mod100 < 12 || mod100 > 14)) return few;
  return many;
}

export function formatDateTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString("ru-RU", { dateStyle: "medium", timeStyle: "short" });
}

/** A duration in whole units, the largest that fits: "меньше минуты", "5 мин", "2 ч", "3 дня". */
export function formatAge(seconds) {
  if (!(seconds >= 60)) return "меньше минуты";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} мин`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} ч`;
  const days = Math.floor(seconds / 86400);
  return `${days} ${plural(days, "день", "дня", "дней")}`;
}

/** A wait after "через", rounded up to the largest unit that fits: "42 секунды", "2 минуты", "1 час". */
export function formatWait(seconds) {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 60) return `${s} ${plural(s, "секунду", "секунды", "секунд")}`;
  if (s < 3600) {
    const m = Math.ceil(s / 60);
    return `${m} ${plural(m, "минуту", "минуты", "минут")}`;
  }
  const h = Math.ceil(s / 3600);
  return `${h} ${plural(h, "час", "часа", "часов")}`;
}

/** A registration refused over the rate limit (429), with the seconds of its Retry-After when it gave them. */
export function tooManyRegistrations(seconds) {
  const first = "Слишком много посылок подряд.";
  if (seconds == null) return `${first} Подождите немного и отправьте снова.`;
  return `${first} Отправьте снова через ${formatWait(seconds)}: данные формы сохранены.`;
}

/** "2025-06-26" -> "26.06.2025": string work, so no time zone can move the day. */
export function formatDay(iso) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  return match ? `${match[3]}.${match[2]}.${match[1]}` : String(iso);
}

/** "2025-06-26" -> "26.06". */
export function formatShortDay(iso) {
  const match = /^\d{4}-(\d{2})-(\d{2})$/.exec(iso);
  return match ? `${match[2]}.${match[1]}` : String(iso);
}
