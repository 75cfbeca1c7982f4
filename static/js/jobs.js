// Follows the progress of unfinished jobs on a project page and reloads it once they are done.
const POLL_MS = 2000;

for (const row of document.querySelectorAll("tr[data-job-url]")) {
  if (row.dataset.jobStatus === "queued" || row.dataset.jobStatus === "running") follow(row);
}

async function follow(row) {
  const response = await fetch(row.dataset.jobUrl, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const job = await response.json();
  row.querySelector("progress").max = job.total || 1;
  row.querySelector("progress").value = job.annotated;
  row.querySelector("[data-field=count]").textContent = `${job.annotated} / ${job.total}`;
  const badge = row.querySelector("[data-field=status]");
  badge.textContent = job.status;
  badge.className = `badge ${job.status}`;
  if (job.status === "done" || job.status === "failed") window.location.reload();
  else setTimeout(() => follow(row), POLL_MS);
}
