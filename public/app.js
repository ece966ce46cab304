// The smallest page that proves the stream reaches a browser: one EventSource, a counter, the last tick.
const source = new EventSource("/stream/sse");
let count = 0;
source.onopen = () => { document.getElementById("status").textContent = "live"; };
source.onerror = () => { document.getElementById("status").textContent = "reconnecting"; };
source.addEventListener("tick", (event) => {
  count += 1;
  document.getElementById("count").textContent = String(count);
  document.getElementById("last").textContent = event.data;
});
