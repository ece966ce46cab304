// The live page: symbols from /symbols, one SSE stream, charts and the table updated once per frame.
import { AnalyticsPanel } from "./analytics.js";
import { CandleChart, PriceChart, VolChart } from "./charts.js";
import { QuotesTable } from "./quotes.js";
import { TickStream } from "./stream.js";

const DEFAULT_SHOWN = 3;

async function main() {
  const symbols = (await (await fetch("symbols")).json()).map((s) => s.symbol);
  const prices = new PriceChart(document.getElementById("price-canvas"), document.getElementById("price-chart"));
  const candles = new CandleChart(document.getElementById("candle-canvas"), document.getElementById("candle-chart"));
  const vols = new VolChart(document.getElementById("vol-canvas"));
  const quotes = new QuotesTable(document.querySelector("#quotes-table tbody"));
  quotes.setSymbols(symbols);

  // Symbol picker: checkboxes for the price chart.
  const picker = document.getElementById("symbols");
  const chosen = () => [...picker.querySelectorAll("input:checked")].map((i) => i.value);
  symbols.forEach((symbol, i) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = symbol;
    box.checked = i < DEFAULT_SHOWN;
    box.addEventListener("change", () => prices.show(chosen()));
    label.append(box, symbol);
    picker.appendChild(label);
  });
  prices.show(chosen());

  // Candles: the focused symbol and the interval.
  const focus = document.getElementById("focus");
  symbols.forEach((symbol) => focus.add(new Option(symbol, symbol)));
  const buttons = [...document.querySelectorAll("#intervals button")];
  let interval = "1s";
  const reload = () => {
    document.getElementById("focus-symbol").textContent = focus.value;
    candles.load(focus.value, interval);
  };
  focus.addEventListener("change", reload);
  const analytics = new AnalyticsPanel();
  document.getElementById("run-analytics").addEventListener("click", () => analytics.run(focus.value));
  buttons.forEach((b) => b.addEventListener("click", () => {
    interval = b.dataset.interval;
    buttons.forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
    reload();
  }));
  reload();

  const status = document.getElementById("status");
  new TickStream(
    (ticks) => { prices.add(ticks); candles.add(ticks); vols.add(ticks); quotes.add(ticks); },
    (state) => { status.dataset.state = state; status.textContent = state; },
  );
}

main();
