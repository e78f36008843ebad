// The keyboard demo: a text box, a suggestion strip fed by POST /v1/predict, and the
// served model's version and round from GET /v1/status. Vanilla JS, no dependencies.
"use strict";

(function () {
  const text = document.getElementById("text");
  const strip = document.getElementById("strip");
  const buttons = Array.from(strip.querySelectorAll(".suggestion"));
  const errorBox = document.getElementById("error");
  const PARTIAL = /[\p{L}\p{N}']+$/u; // the word being typed (as the server reads it)
  let sequence = 0; // answers to older requests are dropped
  let timer = null;

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
  }

  function render(suggestions) {
    buttons.forEach((button, i) => {
      const s = suggestions[i];
      button.textContent = s ? s.word : "";
      button.dataset.word = s ? s.word : "";
      button.title = s && s.p !== null ? `p = ${s.p.toFixed(3)}` : (s ? "by frequency" : "");
      button.disabled = !s;
    });
    strip.dataset.ready = String(sequence);
  }

  async function predict() {
    const mine = ++sequence;
    try {
      const resp = await fetch("/v1/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: text.value, k: buttons.length }),
      });
      const body = await resp.json();
      if (mine !== sequence) return;
      if (!resp.ok) {
        render([]);
        showError(body.error ? body.error.message : `HTTP ${resp.status}`);
        return;
      }
      showError("");
      render(body.suggestions);
      if (body.model_version !== null && body.model_version !== undefined) {
        document.getElementById("model-version").textContent = body.model_version;
      }
    } catch (err) {
      if (mine === sequence) showError(`prediction failed: ${err}`);
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(predict, 60);
  }

  // Tapping a suggestion replaces the word being typed (or appends) and adds a space.
  function insert(word) {
    const value = text.value;
    const m = value.match(PARTIAL);
    let head = m ? value.slice(0, value.length - m[0].length) : value;
    if (m && m[0][0] === m[0][0].toUpperCase() && m[0][0] !== m[0][0].toLowerCase()) {
      word = word[0].toUpperCase() + word.slice(1);
    }
    if (head && !/\s$/.test(head) && !m) head += " ";
    text.value = head + word + " ";
    text.focus();
    text.setSelectionRange(text.value.length, text.value.length);
    predict();
  }

  buttons.forEach((button) => button.addEventListener("click", () => {
    if (button.dataset.word) insert(button.dataset.word);
  }));
  text.addEventListener("input", schedule);

  // A small on-screen keyboard, so the page works like a phone with a mouse too.
  const ROWS = ["qwertyuiop", "asdfghjkl'", "zxcvbnm,.?"];
  const keys = document.getElementById("keys");
  function key(label, action, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "key" + (cls ? " " + cls : "");
    b.textContent = label;
    b.addEventListener("click", () => { action(); text.focus(); schedule(); });
    return b;
  }
  ROWS.forEach((row) => {
    const div = document.createElement("div");
    for (const ch of row) div.appendChild(key(ch, () => { text.value += ch; }));
    keys.appendChild(div);
  });
  const last = document.createElement("div");
  last.appendChild(key("⌫", () => { text.value = text.value.slice(0, -1); }, "wide"));
  last.appendChild(key("space", () => { text.value += " "; }, "space"));
  keys.appendChild(last);

  async function status() {
    try {
      const s = await (await fetch("/v1/status", { cache: "no-store" })).json();
      document.getElementById("model-version").textContent =
        s.model_version === null ? "–" : s.model_version;
      const current = s.current_round ? s.current_round.id : null;
      document.getElementById("round").textContent = current !== null
        ? `${current} (open)` : `${s.rounds_committed} committed`;
    } catch (err) {
      showError(`status failed: ${err}`);
    }
  }

  status();
  setInterval(status, 3000);
  predict();
})();
