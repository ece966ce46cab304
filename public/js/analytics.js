// The analytics panel: a reference strategy's equity curve over the stored 1-second candles, and the
// true volatility (the simulator knows it) against a particle filter's and a rolling window's estimate.

const Chart = window.Chart;

function lineChart(canvas) {
  const color = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim() || "#666";
  return new Chart(canvas, {
    type: "line",
    data: { labels: [], datasets: [] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
      plugins: { legend: { labels: { color, boxWidth: 10 } } },
      scales: { x: { display: false }, y: { ticks: { color } } },
    },
  });
}

export class AnalyticsPanel {
  constructor() {
    this.equity = lineChart(document.getElementById("equity-canvas"));
    this.filter = lineChart(document.getElementById("filter-canvas"));
    this.stats = document.getElementById("strategy-stats");
    this.filterStats = document.getElementById("filter-stats");
  }

  async run(symbol) {
    document.getElementById("analytics-symbol").textContent = symbol;
    const kind = document.getElementById("strategy").value;
    const s = await fetch(`analytics/strategy?symbol=${encodeURIComponent(symbol)}&kind=${kind}&interval=1s`);
    const body = await s.json();
    if (s.ok) {
      this.stats.textContent = `Sharpe ${body.sharpe.toFixed(2)} · max drawdown ${(100 * body.max_drawdown).toFixed(2)}% · turnover ${body.turnover.toFixed(2)}`;
      this.stats.dataset.sharpe = String(body.sharpe);
      this.equity.data.labels = body.equity.map((_, i) => i);
      this.equity.data.datasets = [{ label: body.strategy, data: body.equity, borderColor: "#2563eb" }];
      this.equity.update("none");
    } else {
      this.stats.textContent = body.detail;
    }
    const v = await fetch(`analytics/volatility?symbol=${encodeURIComponent(symbol)}&limit=1000&window=50`);
    const vol = await v.json();
    if (!v.ok) { this.filterStats.textContent = vol.detail; return; }
    this.filterStats.textContent = `RMSE filter ${vol.rmse_filter.toFixed(4)} · rolling ${vol.rmse_rolling.toFixed(4)}`;
    this.filterStats.dataset.rmseFilter = String(vol.rmse_filter);
    this.filterStats.dataset.rmseRolling = String(vol.rmse_rolling);
    this.filter.data.labels = vol.true.map((_, i) => i);
    this.filter.data.datasets = [
      { label: "true", data: vol.true, borderColor: "#16a34a" },
      { label: "particle filter", data: vol.filter, borderColor: "#7c3aed" },
      { label: "rolling window", data: vol.rolling, borderColor: "#d97706" },
    ];
    this.filter.update("none");
  }
}
