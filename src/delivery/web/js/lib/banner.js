// The banner at the top of a page: the service or the network is down.

import { $, el } from "./dom.js";
import { ServiceError, retryAfterSeconds } from "./api.js";
import { formatWait } from "./format.js";

export function bannerMessage(error) {
  if (error instanceof ServiceError && error.kind === "unavailable") {
    let message = "Сервис временно недоступен, попробуйте позже.";
    if (error.retryAfter && /^\d+$/.test(error.retryAfter.trim())) {
      message += ` Повторите попытку через ${error.retryAfter.trim()} с.`;
    }
    return message;
  }
  if (error instanceof ServiceError && error.kind === "limited") {
    const seconds = retryAfterSeconds(error.retryAfter);
    if (seconds === null) return "Слишком много запросов. Подождите немного и повторите.";
    return `Слишком много запросов. Повторите через ${formatWait(seconds)}.`;
  }
  if (error instanceof ServiceError && error.kind === "network") {
    return "Нет связи с сервером. Проверьте подключение и попробуйте ещё раз.";
  }
  if (error instanceof ServiceError) return "На сервере произошла ошибка. Попробуйте позже.";
  console.error(error);
  return "Что-то пошло не так. Обновите страницу.";
}

export function showBanner(error) {
  // New content inside the existing alert region is what screen readers announce.
  $("banner").replaceChildren(el("div", { class: "banner" }, el("p", { text: bannerMessage(error) })));
}

export function clearBanner() {
  $("banner").replaceChildren();
}
