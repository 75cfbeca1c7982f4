// Follows unfinished fine-tuning runs on a project's models page and reloads it once they end.
const POLL_MS = 2000;
const FINISHED = ["done", "failed", "cancelled"];

for (const row of document.querySelectorAll("tr[data-run-url]")) {
  if (!FINISHED.includes(row.dataset.runStatus)) follow(row);
}

async function follow(row) {
  const response = await fetch(row.dataset.runUrl, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const run = await response.json();
  row.querySelector("progress").value = run.progress;
  row.querySelector("[data-field=message]").textContent = run.message;
  const badge = row.querySelector("[data-field=status]");
  badge.textContent = run.status;
  badge.className = `badge ${run.status}`;
  if (FINISHED.includes(run.status)) window.location.reload();
  else setTimeout(() => follow(row), POLL_MS);
}
