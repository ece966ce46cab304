// The quotes table: one row per symbol, flashed briefly when its quote changes.

export class QuotesTable {
  constructor(tbody) {
    this.tbody = tbody;
    this.rows = new Map();
    this.open = new Map();  // first price seen: the reference for change %
  }

  setSymbols(symbols) {
    this.tbody.replaceChildren();
    for (const symbol of symbols) {
      const tr = document.createElement("tr");
      tr.dataset.symbol = symbol;
      tr.dataset.seq = "0";
      for (let i = 0; i < 5; i += 1) tr.appendChild(document.createElement("td"));
      tr.cells[0].textContent = symbol;
      this.tbody.appendChild(tr);
      this.rows.set(symbol, tr);
    }
  }

  add(ticks) {
    const latest = new Map();
    for (const t of ticks) latest.set(t.symbol, t);
    for (const t of latest.values()) {
      const tr = this.rows.get(t.symbol);
      if (!tr) continue;
      if (!this.open.has(t.symbol)) this.open.set(t.symbol, t.price);
      const moved = tr.cells[1].textContent !== t.price.toFixed(2);
      const change = 100 * (t.price / this.open.get(t.symbol) - 1);
      tr.cells[1].textContent = t.price.toFixed(2);
      tr.cells[2].textContent = t.bid.toFixed(2);
      tr.cells[3].textContent = t.ask.toFixed(2);
      tr.cells[4].textContent = `${change >= 0 ? "+" : ""}${change.toFixed(2)}%`;
      tr.cells[4].className = change >= 0 ? "up" : "down";
      tr.dataset.seq = String(t.seq);
      if (moved) {  // highlight a new last price, not every tick
        tr.classList.remove("flash");
        void tr.offsetWidth;  // restart the CSS animation
        tr.classList.add("flash");
      }
    }
  }
}
