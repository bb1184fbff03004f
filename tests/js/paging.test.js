// The list's pager and summary line, and Russian plurals.
import assert from "node:assert/strict";
import { test } from "node:test";

import { plural, formatDay, formatShortDay } from "../../src/delivery/web/js/lib/format.js";
import { listSummary, pageAfterShrink, pager } from "../../src/delivery/web/js/lib/paging.js";

test("the pager", () => {
  assert.deepEqual(pager({ page: 1, pages: 3 }), {
    hidden: false,
    info: "Страница 1 из 3",
    prevDisabled: true,
    nextDisabled: false,
  });
  assert.deepEqual(pager({ page: 3, pages: 3 }).nextDisabled, true);
  assert.deepEqual(pager({ page: 1, pages: 0 }), {
    hidden: true,
    info: "Страница 1 из 1",
    prevDisabled: true,
    nextDisabled: true,
  });
});

test("a page past the end (fewer parcels now) goes back to the last page", () => {
  assert.equal(pageAfterShrink({ items: [], total: 25, pages: 3 }, 5), 3);
  assert.equal(pageAfterShrink({ items: [], total: 0, pages: 0 }, 1), null);
  assert.equal(pageAfterShrink({ items: [{}], total: 25, pages: 3 }, 3), null);
});

test("the summary line, with Russian plurals", () => {
  assert.equal(listSummary(0, false), "Посылок пока нет. Зарегистрируйте первую.");
  assert.equal(listSummary(0, true), "Нет посылок с такими фильтрами.");
  assert.equal(listSummary(1, false), "Всего: 1 посылка");
  assert.equal(listSummary(3, true), "Найдено: 3 посылки");
  assert.equal(listSummary(25, false), "Всего: 25 посылок");
  const forms = (n) => plural(n, "one", "few", "many");
  assert.deepEqual([1, 2, 5, 11, 12, 14, 21, 22, 25, 101, 111, 112].map(forms), [
    "one", "few", "many", "many", "many", "many", "one", "few", "many", "one", "many", "many",
  ]);
});

test("days are written from the ISO string, so no time zone moves them", () => {
  assert.equal(formatDay("2025-06-26"), "26.06.2025");
  assert.equal(formatShortDay("2024-02-29"), "29.02");
});
