// The audit trail's entries in Russian: the server writes them in plain English words (`company.bind`,
// `refused: company 7 holds it`), the same for every client; the page says what they mean.

const ACTIONS = {
  "pricing.start": "Запуск расчёта стоимости",
  "pricing.run": "Расчёт стоимости из командной строки",
  "company.bind": "Закрепление транспортной компании",
  "operator.add": "Добавление оператора",
  "operator.revoke": "Отзыв ключа оператора",
  "dead_letters.requeue": "Повторная отправка неудавшихся заданий",
};

const RESULTS = { ok: "выполнено", refused: "отказано", failed: "ошибка" };

/** The action's name, or the code itself for one this page does not know yet. */
export function actionLabel(action) {
  return ACTIONS[action] || action;
}

/** "package 17, company 7" -> "посылка № 17, компания № 7"; "task <id>" -> "задача <id>"; … */
export function objectLabel(object) {
  if (object == null) return "—";
  let match = /^package (\d+), company (\d+)$/.exec(object);
  if (match) return `посылка № ${match[1]}, компания № ${match[2]}`;
  match = /^task (.+)$/.exec(object);
  if (match) return `задача ${match[1]}`;
  match = /^operator (.+)$/.exec(object);
  if (match) return `оператор ${match[1]}`;
  if (object === "dead letters") return "неудавшиеся задания";
  return object;
}

/** {kind: "ok" | "refused" | "failed" | "", text}: the outcome's first word, and the whole in Russian. */
export function outcomeLabel(outcome) {
  const [, word, detail] = /^(\w+)(?::\s*([\s\S]*))?$/.exec(outcome || "") || [null, "", outcome || ""];
  const kind = word in RESULTS ? word : "";
  if (!kind) return { kind, text: outcome || "" };
  if (detail === undefined) return { kind, text: RESULTS[kind] };
  let match = /^company (\d+) holds it$/.exec(detail);
  if (match) return { kind, text: `${RESULTS[kind]}: посылку уже доставляет компания № ${match[1]}` };
  match = /^sent back (\d+)$/.exec(detail);
  if (match) return { kind, text: `${RESULTS[kind]}: отправлено снова ${match[1]}` };
  match = /^sent back (\d+), then ([\s\S]*)$/.exec(detail);
  if (match) return { kind, text: `${RESULTS[kind]} после отправки ${match[1]}: ${match[2]}` };
  match = /^priced (\d+)$/.exec(detail);
  if (match) return { kind, text: `${RESULTS[kind]}: рассчитано посылок ${match[1]}` };
  return { kind, text: `${RESULTS[kind]}: ${detail}` };
}
