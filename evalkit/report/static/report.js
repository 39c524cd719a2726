// The sample browser. Every piece of sample text goes through textContent, never HTML.
(function () {
  "use strict";
  const samples = window.EVALKIT_SAMPLES || [];
  const PAGE = 100;
  const form = document.getElementById("filters");
  const list = document.getElementById("sample-list");
  const more = document.getElementById("more");
  const count = document.getElementById("count");
  const SENT_NOTES = {
    exact: "Exactly the text sent to the model: its sha256 below is the record's " +
      "prompt_sha256. Marked: the template's text (chat markers, special tokens); plain: " +
      "the task's text. The token count is the model tokenizer's, with any BOS it adds.",
    bare: "Exactly the text sent to the model (template {t} adds no text of its own): its " +
      "sha256 below is the record's prompt_sha256. The token count is the model " +
      "tokenizer's, with any BOS it adds.",
    server: "The text evalkit sent, as one user message, to the server's chat endpoint: its " +
      "sha256 below is the record's prompt_sha256. The server wrapped it in the model's chat " +
      "template, which evalkit does not see; the token count includes it, as evalkit counts it.",
    unsplit: "Exactly the text sent to the model: its sha256 below is the record's " +
      "prompt_sha256. The template changed the task's text, so the two are not told apart.",
    differs: "Warning: this text does not hash to the record's prompt_sha256 below, so what " +
      "was sent is not known exactly.",
    user: "The run was made by an evalkit that did not keep the template's text: shown is " +
      "the task's text alone, before template {t} was applied; the record's prompt_sha256 " +
      "below is that of the text sent."
  };
  let matched = [];
  let shown = 0;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // The prompts' text is in prompts/NNNN.js files, each chunk once: file f holds chunks
  // CHUNK_FILES[f] onwards. A prompt loads the files of its chunks, nothing else.
  const CHUNK_FILES = window.EVALKIT_CHUNK_FILES || [0];

  function fileOf(n) {
    let lo = 0, hi = CHUNK_FILES.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (CHUNK_FILES[mid] <= n) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  const loading = {};
  function loadChunks(file) {
    window.EVALKIT_CHUNKS = window.EVALKIT_CHUNKS || {};
    if (!loading[file]) {
      loading[file] = new Promise(function (resolve, reject) {
        const s = document.createElement("script");
        // the build's id: a file of an earlier report of this folder, cached, is not used
        s.src = "prompts/" + String(file).padStart(4, "0") + ".js?b=" + (window.EVALKIT_BUILD || "");
        s.onload = function () { resolve(window.EVALKIT_CHUNKS[file]); };
        s.onerror = function (e) { delete loading[file]; reject(e); };
        document.body.appendChild(s);
      });
    }
    return loading[file];
  }

  // [template text before, user text, template text after] of a sample's prompt
  function promptParts(s) {
    const files = new Set();
    s.pc.forEach(function (part) { part.forEach(function (n) { files.add(fileOf(n)); }); });
    return Promise.all(Array.from(files).map(loadChunks)).then(function () {
      return s.pc.map(function (part) {
        return part.map(function (n) {
          const f = fileOf(n);
          const text = (window.EVALKIT_CHUNKS[f] || [])[n - CHUNK_FILES[f]];
          if (typeof text !== "string") throw new Error("chunk " + n + " is missing");
          return text;
        }).join("");
      });
    });
  }

  // A part of the prompt as a span, with every occurrence of a mark's text (a needle, the
  // question) in a <mark>: text nodes only, never HTML.
  function marked(text, cls, marks) {
    const span = el("span", cls);
    const hits = [];
    marks.forEach(function (m) {
      if (!m[1]) return;
      for (let at = text.indexOf(m[1]); at >= 0; at = text.indexOf(m[1], at + m[1].length)) {
        hits.push([at, at + m[1].length, m[0]]);
      }
    });
    hits.sort(function (a, b) { return a[0] - b[0]; });
    let pos = 0;
    hits.forEach(function (h) {
      if (h[0] < pos) return;  // overlapping: the first one wins
      if (h[0] > pos) span.append(document.createTextNode(text.slice(pos, h[0])));
      span.append(el("mark", h[2], text.slice(h[0], h[1])));
      pos = h[1];
    });
    if (pos < text.length) span.append(document.createTextNode(text.slice(pos)));
    return span;
  }

  // Buttons that scroll the prompt to each needle and to the question.
  function jumpLinks(box, pre) {
    box.replaceChildren();
    const found = pre.querySelectorAll("mark");
    if (!found.length) return;
    box.append(el("span", "", "jump to: "));
    let n = 0;
    found.forEach(function (m) {
      const name = m.className === "needle" ? "needle " + (++n) : m.className;
      const b = el("button", "jump " + m.className, name);
      b.type = "button";
      b.addEventListener("click", function () {
        pre.scrollTop = Math.max(0, m.offsetTop - 40);  // the <pre> is the offset parent
        m.classList.add("flash");
        setTimeout(function () { m.classList.remove("flash"); }, 1200);
      });
      box.append(b);
    });
  }

  function card(s) {
    const box = el("article", "sample " + s.outcome);
    box.dataset.outcome = s.outcome;
    const head = el("div", "head");
    head.append(el("span", "id", s.id), el("span", "", s.model), el("span", "", s.task + " @ " + s.length),
      el("span", "outcome", s.outcome + (s.metric ? " (" + s.metric + ")" : "")), el("span", "", s.input_tokens + " tokens in"),
      el("span", "", (s.output_tokens === null ? "?" : s.output_tokens) + " out"),
      el("span", "", s.latency_s + " s"));
    if (s.cached) head.append(el("span", "cached", "from the response cache"));
    if (s.exhausted) head.append(el("span", "exhausted", "reasoning used the whole budget: no answer"));
    if (s.depth !== null && s.depth !== undefined) head.append(el("span", "", "depth " + s.depth));
    const kv = el("dl", "kv");
    kv.append(el("dt", "", "expected"), el("dd", "expected", s.expected));
    kv.append(el("dt", "", "answer read"), el("dd", "parsed", s.parsed !== null ? s.parsed
      : s.outcome === "unparsed" ? "(nothing readable)" : "–"));
    const names = Object.keys(s.scores || {});
    if (names.length) {
      kv.append(el("dt", "", "scores"), el("dd", "scores", names.map(function (k) {
        const v = s.scores[k];
        return k + " " + (v === null ? "?" : String(v));
      }).join(" · ")));
    }
    const out = el("pre", "output", s.error ? "ERROR: " + s.error : s.output + (s.output_cut ? "\n[... cut; see samples.jsonl]" : ""));
    kv.append(el("dt", "", s.reasoning !== null && s.reasoning !== undefined ? "answer" : "output"), el("dd", "", ""));
    kv.lastChild.append(out);
    if (s.reasoning !== null && s.reasoning !== undefined) {
      const why = el("details", "reasoning");
      const size = s.reasoning_tokens === null ? s.reasoning.length + " characters"
        : s.reasoning_tokens + " tokens";
      why.append(el("summary", "", "reasoning (" + size +
        (s.exhausted ? ", the whole budget" : "") + ")"), el("pre", "reasoning", s.reasoning));
      kv.append(el("dt", "", "reasoning"), el("dd", "", ""));
      kv.lastChild.append(why);
    }
    const det = el("details", "prompt");
    det.append(el("summary", "", (s.sent === "user" ? "prompt, user text only (" : "prompt as sent (")
      + s.input_tokens + " tokens, template " + s.template + ")"));
    const note = s.sent === "exact" && !s.framed ? "bare" : s.sent;
    det.append(el("p", "sent-note " + s.sent, SENT_NOTES[note].replace("{t}", function () {
      return s.template;
    })));
    det.append(el("p", "sha", "sha256 " + s.sha256));
    const jumps = el("p", "jumps");
    det.append(jumps);
    const pre = el("pre", "sent", "");
    det.append(pre);
    det.addEventListener("toggle", function () {
      if (!det.open || pre.dataset.loaded) return;
      pre.textContent = "loading...";
      // only the files of this prompt's chunks
      promptParts(s).then(function (parts) {
        // [template text before, user text, template text after]: the template's text is
        // marked, and the whole <pre> reads exactly the string that was sent
        pre.replaceChildren();
        parts.forEach(function (text, i) {
          if (text) pre.append(marked(text, i === 1 ? "user" : "tmpl", s.marks || []));
        });
        jumpLinks(jumps, pre);
        pre.dataset.loaded = "1";
      }).catch(function () {
        pre.textContent = "(could not load this prompt: its files in prompts/ are missing or " +
          "from another build of the report; build the report again)";
      });
    });
    box.append(head, kv, det);
    return box;
  }

  function showMore() {
    const frag = document.createDocumentFragment();
    const end = Math.min(matched.length, shown + PAGE);
    for (let i = shown; i < end; i++) frag.append(card(matched[i]));
    list.append(frag);
    shown = end;
    more.hidden = shown >= matched.length;
    more.textContent = "show more (" + (matched.length - shown) + " left)";
  }

  function apply() {
    const f = new FormData(form);
    const model = f.get("model"), task = f.get("task"), length = f.get("length");
    const outcome = f.get("outcome"), q = String(f.get("q") || "").toLowerCase();
    matched = samples.filter(function (s) {
      if (model && s.model !== model) return false;
      if (task && s.task !== task) return false;
      if (length && s.length !== length) return false;
      if (outcome === "incorrect" ? (s.outcome === "correct" || s.outcome === "scored")
          : outcome && s.outcome !== outcome) return false;
      if (q && (s.id + "\n" + s.output + "\n" + s.expected).toLowerCase().indexOf(q) < 0) return false;
      return true;
    });
    list.replaceChildren();
    shown = 0;
    count.textContent = matched.length + " of " + samples.length + (samples.length === 1 ? " sample" : " samples");
    showMore();
  }

  form.addEventListener("change", apply);
  form.addEventListener("input", apply);
  form.addEventListener("submit", function (e) { e.preventDefault(); });
  more.addEventListener("click", showMore);
  apply();
})();
