"use strict";
// The report's two browsers, a page at a time: preference pairs (filter by source and margin, search the text) and
// held-out prompts (order by a measure's change, search). The data sit in JSON script elements; every text from the
// run is set with textContent, never parsed as markup, so markup inside an answer stays text.
(function () {
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function figure(value) {
    if (value === null || value === undefined) return "—";
    return Number.isInteger(value) ? value.toLocaleString("en") : String(Number(value.toPrecision(4)));
  }

  function signed(value) {
    const text = figure(value);
    return value > 0 ? "+" + text : text;
  }

  function conversation(messages) {
    const box = element("div", "prompt");
    for (const message of messages) {
      const line = element("div", "message");
      line.appendChild(element("span", "role", message.role));
      line.appendChild(element("pre", "text", message.content));
      box.appendChild(line);
    }
    return box;
  }

  function side(className, title, meta, text) {
    const box = element("section", "side " + className);
    box.appendChild(element("h5", "", title));
    box.appendChild(element("p", "meta", meta));
    box.appendChild(element("pre", "text", text));
    return box;
  }

  const kinds = {
    pairs: {
      noun: "pairs",
      haystack: (item) => [item.id, ...item.prompt.map((m) => m.content), item.chosen, item.rejected].join("\n"),
      keep(item, filters) {
        if (filters.source_chosen && item.source_chosen !== filters.source_chosen) return false;
        if (filters.source_rejected && item.source_rejected !== filters.source_rejected) return false;
        const low = parseFloat(filters.margin_min);
        const high = parseFloat(filters.margin_max);
        if (!Number.isNaN(low) && !(item.margin !== null && item.margin >= low)) return false;
        if (!Number.isNaN(high) && !(item.margin !== null && item.margin <= high)) return false;
        return true;
      },
      render(item) {
        const card = element("article", "pair");
        card.dataset.pairId = item.id;
        const head = element("header");
        head.appendChild(element("strong", "id", item.id));
        head.appendChild(element("span", "margin", "margin " + signed(item.margin)));
        card.appendChild(head);
        card.appendChild(conversation(item.prompt));
        const sides = element("div", "sides");
        const meta = (source, score, length) =>
          source + " · score " + figure(score) + " · " + figure(length) + " characters";
        const chosen = meta(item.source_chosen, item.score_chosen, item.length_chosen);
        const rejected = meta(item.source_rejected, item.score_rejected, item.length_rejected);
        sides.appendChild(side("chosen", "chosen", chosen, item.chosen));
        sides.appendChild(side("rejected", "rejected", rejected, item.rejected));
        card.appendChild(sides);
        return card;
      },
    },
    prompts: {
      noun: "prompts",
      haystack: (item) => [item.id, item.prompt, item.reference || "", item.baseline, item.model].join("\n"),
      keep: () => true,
      sortKey(order) {
        const parts = order.split(":");
        const name = parts.slice(1, -1).join(":");
        if (parts[0] === "delta") return (item) => item.model_measures[name] - item.baseline_measures[name];
        return (item) => item.preference;
      },
      render(item, data) {
        const card = element("article", "prompt-item");
        card.dataset.promptId = item.id;
        const head = element("header");
        head.appendChild(element("strong", "id", item.id));
        if (item.label) head.appendChild(element("span", "badge", item.label));
        if (item.constraint) head.appendChild(element("span", "muted", "constraint: " + item.constraint));
        if (item.preference !== null) {
          const preference = "judge preference " + figure(item.preference) + " (1 = the baseline, 2 = the model)";
          head.appendChild(element("span", "muted", preference));
        }
        card.appendChild(head);
        card.appendChild(conversation([{ role: "user", content: item.prompt }]));
        if (item.reference !== null) {
          const details = element("details", "reference");
          details.appendChild(element("summary", "", "reference answer"));
          details.appendChild(element("pre", "text", item.reference));
          card.appendChild(details);
        }
        const sides = element("div", "sides");
        const length = (text) => figure(text.length) + " characters";
        sides.appendChild(side("baseline", data.baseline, length(item.baseline), item.baseline));
        sides.appendChild(side("model", data.model, length(item.model), item.model));
        card.appendChild(sides);
        if (data.measures.length) {
          const table = element("table", "measures");
          const header = table.insertRow();
          for (const title of ["measure", data.baseline, data.model, "change"]) {
            header.appendChild(element("th", "", title));
          }
          for (const name of data.measures) {
            const row = table.insertRow();
            const before = item.baseline_measures[name];
            const after = item.model_measures[name];
            for (const text of [name, figure(before), figure(after), signed(after - before)]) {
              row.appendChild(element("td", "", text));
            }
          }
          card.appendChild(table);
        }
        return card;
      },
    },
  };

  function setUp(root) {
    const kind = kinds[root.dataset.kind];
    const data = JSON.parse(document.getElementById(root.dataset.items).textContent);
    const pageSize = parseInt(root.dataset.pageSize, 10);
    const list = root.querySelector(".items");
    const haystacks = new Map();
    let page = 0;

    function matches() {
      const filters = {};
      for (const control of root.querySelectorAll("[data-filter]")) filters[control.dataset.filter] = control.value;
      const needle = (filters.text || "").trim().toLowerCase();
      let shown = data.items.filter((item) => {
        if (!kind.keep(item, filters)) return false;
        if (!needle) return true;
        if (!haystacks.has(item)) haystacks.set(item, kind.haystack(item).toLowerCase());
        return haystacks.get(item).includes(needle);
      });
      const order = root.querySelector("[data-sort]");
      if (order && order.value) {
        const key = kind.sortKey(order.value);
        const sign = order.value.endsWith(":asc") ? 1 : -1;
        const keyed = shown.map((item) => [Number.isFinite(key(item)) ? key(item) : null, item]);
        keyed.sort(([x], [y]) => (x === null || y === null ? (x === null) - (y === null) : sign * (x - y)));
        shown = keyed.map(([, item]) => item);  // a stable sort: ties keep the listed order; missing values go last
      }
      return shown;
    }

    function update() {
      const shown = matches();
      const pages = Math.max(1, Math.ceil(shown.length / pageSize));
      page = Math.min(page, pages - 1);
      const start = page * pageSize;
      const slice = shown.slice(start, start + pageSize);
      list.replaceChildren(...slice.map((item) => kind.render(item, data)));
      const filtered = shown.length < data.items.length ? " matching, of " + figure(data.items.length) : "";
      const range = figure(start + 1) + "–" + figure(start + slice.length) + " of " + figure(shown.length);
      const status = shown.length
        ? kind.noun + " " + range + filtered + " · page " + (page + 1) + " of " + pages
        : "no " + kind.noun + " match (of " + figure(data.items.length) + ")";
      for (const label of root.querySelectorAll(".status")) label.textContent = status;
      for (const button of root.querySelectorAll("[data-page=prev]")) button.disabled = page === 0;
      for (const button of root.querySelectorAll("[data-page=next]")) button.disabled = page >= pages - 1;
    }

    for (const control of root.querySelectorAll("[data-filter], [data-sort]")) {
      control.addEventListener("input", () => {
        page = 0;
        update();
      });
    }
    for (const button of root.querySelectorAll("[data-page]")) {
      button.addEventListener("click", () => {
        page += button.dataset.page === "next" ? 1 : -1;
        update();
        if (button.closest(".pager").dataset.position === "bottom") root.scrollIntoView({ block: "start" });
      });
    }
    update();
  }

  for (const root of document.querySelectorAll(".browser[data-kind]")) setUp(root);
})();
