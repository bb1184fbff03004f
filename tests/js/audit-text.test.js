// The audit trail's entries as the console words them.
import assert from "node:assert/strict";
import { test } from "node:test";

import { actionLabel, objectLabel, outcomeLabel } from "../../src/delivery/web/js/admin/audit-text.js";

test("actions by name, an unknown one as it is", () => {
  assert.equal(actionLabel("company.bind"), "Закрепление транспортной компании");
  assert.equal(actionLabel("operator.revoke"), "Отзыв ключа оператора");
  assert.equal(actionLabel("something.new"), "something.new");
});

test("objects", () => {
  assert.equal(objectLabel("package 17, company 9007199254740991"), "посылка № 17, компания № 9007199254740991");
  assert.equal(objectLabel("task 5f0c"), "задача 5f0c");
  assert.equal(objectLabel("operator bob.smith"), "оператор bob.smith");
  assert.equal(objectLabel("dead letters"), "неудавшиеся задания");
  assert.equal(objectLabel(null), "—");
  assert.equal(objectLabel("something else"), "something else");
});

test("outcomes: the kind, and the known details in Russian", () => {
  assert.deepEqual(outcomeLabel("ok"), { kind: "ok", text: "выполнено" });
  assert.deepEqual(outcomeLabel("refused: company 7 holds it"), {
    kind: "refused",
    text: "отказано: посылку уже доставляет компания № 7",
  });
  assert.deepEqual(outcomeLabel("ok: sent back 3"), { kind: "ok", text: "выполнено: отправлено снова 3" });
  assert.deepEqual(outcomeLabel("ok: priced 12"), { kind: "ok", text: "выполнено: рассчитано посылок 12" });
  assert.deepEqual(outcomeLabel("failed: broker is unavailable"), {
    kind: "failed",
    text: "ошибка: broker is unavailable",
  });
  assert.deepEqual(outcomeLabel("failed: sent back 2, then broker is unavailable"), {
    kind: "failed",
    text: "ошибка после отправки 2: broker is unavailable",
  });
  assert.deepEqual(outcomeLabel("whatever"), { kind: "", text: "whatever" });
});
