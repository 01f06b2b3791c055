// The console's actions. Each button names its URL and the form fields it sends; the answer is
// shown as text (never as HTML). The browser adds the Basic credentials it signed in with; the
// X-Requested-With header is what tells the gateway the request came from this page.
"use strict";

function describe(answer) {
  if (answer.found !== undefined) {  // a replay
    return `found: ${answer.found}; ${answer.action}; now ${answer.status} / ${answer.stage}`;
  }
  if (answer.stage !== undefined) return `now ${answer.status} / ${answer.stage}`;  // a resolve
  return `now ${answer.status}`;  // a reprocessed webhook event
}

async function act(form, button) {
  const output = form.querySelector("output");
  const body = {};
  for (const name of button.dataset.fields.split(" ")) {
    const value = form.elements[name].value.trim();
    if (value !== "") body[name] = value;
  }
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  output.className = "";
  output.textContent = "working…";
  try {
    const resp = await fetch(button.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Requested-With": "psp-gateway-console"},
      body: JSON.stringify(body),
    });
    const answer = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      output.className = "error";
      output.textContent = `${resp.status} ${answer.code || ""}: ${answer.detail || resp.statusText}`;
      buttons.forEach((b) => { b.disabled = false; });
      return;
    }
    output.className = "ok";
    output.textContent = describe(answer);
    const item = form.closest("[data-refund-id], tr");
    const status = item && item.querySelector("[data-field=status]");
    if (status && answer.status) status.textContent = answer.status;
    const stage = item && item.querySelector("[data-field=stage]");
    if (stage && answer.stage) stage.textContent = answer.stage;
    if (item) item.classList.add("acted");
  } catch (error) {
    output.className = "error";
    output.textContent = `not sent: ${error}`;
    buttons.forEach((b) => { b.disabled = false; });
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.classList.contains("action")) return;
  event.preventDefault();
  const button = event.submitter && event.submitter.dataset.url ? event.submitter : form.querySelector("button");
  act(form, button);
});
