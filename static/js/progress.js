// Follows the unfinished jobs and fine-tuning runs of a page (rows with data-poll-url, the API's JSON for them)
// and reloads the page once they end. The row's <progress> shows the JSON's `progress` (0..1), and every element
// with a data-field shows the field of that name.
const POLL_MS = 2000;
const FINISHED = ["done", "failed", "cancelled"];

for (const row of document.querySelectorAll("tr[data-poll-url]")) {
  if (!FINISHED.includes(row.dataset.pollStatus)) follow(row);
}

async function follow(row) {
  const response = await fetch(row.dataset.pollUrl, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const state = await response.json();
  row.querySelector("progress").value = state.progress;
  for (const field of row.querySelectorAll("[data-field]")) field.textContent = state[field.dataset.field];
  row.querySelector("[data-field=status]").className = `badge ${state.status}`;
  if (FINISHED.includes(state.status)) window.location.reload();
  else setTimeout(() => follow(row), POLL_MS);
}
