// The list's pages and its summary line, worked out from the API's page answer.

import { plural } from "./format.js";

/** What the pager shows for a page answer {page, pages, total}. */
export function pager(data) {
  return {
    hidden: data.pages <= 1,
    info: `Страница ${data.page} из ${Math.max(data.pages, 1)}`,
    prevDisabled: data.page <= 1,
    nextDisabled: data.page >= data.pages,
  };
}

/** The page to ask for instead, when the asked one went past the end (fewer parcels now); else null. */
export function pageAfterShrink(data, asked) {
  return !data.items.length && data.total > 0 && asked > data.pages ? data.pages : null;
}

/** "Всего: 25 посылок", "Найдено: 3 посылки", or what an empty list says. */
export function listSummary(total, filtered) {
  if (total === 0) return filtered ? "Нет посылок с такими фильтрами." : "Посылок пока нет. Зарегистрируйте первую.";
  return `${filtered ? "Найдено" : "Всего"}: ${total} ${plural(total, "посылка", "посылки", "посылок")}`;
}
