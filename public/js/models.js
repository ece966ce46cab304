// The Models page: live parameters from /model beside the equations.

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

async function main() {
  const model = await (await fetch("model")).json();
  document.getElementById("model-summary").textContent =
    `scheme ${model.scheme}, jumps ${model.jumps ? "on" : "off"}, seed ${model.seed}, ` +
    `${model.tick_rate} steps/s, Δ = ${model.dt_seconds.toFixed(3)} s of simulated time; factors: ${model.factors.join(", ")}`;
  const tbody = document.querySelector("#params-table tbody");
  for (const a of model.assets) {
    const tr = document.createElement("tr");
    cell(tr, a.symbol);
    cell(tr, a.sector);
    cell(tr, a.s0.toFixed(2));
    cell(tr, a.mu.toFixed(3));
    cell(tr, Math.sqrt(a.v0).toFixed(3));
    cell(tr, a.kappa.toFixed(2));
    cell(tr, Math.sqrt(a.theta).toFixed(3));
    cell(tr, a.xi.toFixed(2));
    cell(tr, a.rho.toFixed(2));
    cell(tr, a.hurst.toFixed(2));
    cell(tr, a.betas.map((b) => b.toFixed(1)).join(" "));
    cell(tr, 2 * a.kappa * a.theta >= a.xi * a.xi ? "yes" : "no");
    tbody.appendChild(tr);
  }
}

main();
