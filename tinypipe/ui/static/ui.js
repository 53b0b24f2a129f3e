// tinypipe web UI: live refresh of the jobs list and of a job's page, with plain fetch() calls.
"use strict";

function every(milliseconds, task) {
  const run = async () => {
    let again = true;
    if (!document.hidden) {
      try { again = (await task()) !== false; } catch (error) { again = true; }
    }
    if (again) setTimeout(run, milliseconds);
  };
  run();
}

// A log as a terminal shows it: a progress bar redrawn with "\r" keeps only its newest state.
function terminalText(raw) {
  return raw.split("\n").map((line) => line.split("\r").filter((part) => part.length).pop() || "").join("\n");
}

function followJob(section) {
  const id = section.dataset.job;
  const log = document.getElementById("log");
  const loss = document.getElementById("loss");
  let raw = "", offset = 0, wasActive = section.dataset.active === "true", lastLoss = 0;
  every(1000, async () => {
    const answer = await (await fetch(`/jobs/${id}/log?offset=${offset}`, {cache: "no-store"})).json();
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    if (answer.text) {
      raw += answer.text;
      offset = answer.offset;
      log.textContent = terminalText(raw);
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
    const status = document.getElementById("job-status");
    status.textContent = answer.status;
    status.className = `badge ${answer.status}`;
    document.getElementById("job-progress").textContent =
      answer.progress ? `${answer.progress} steps${answer.eta ? `, ${answer.eta} left` : ""}` : "";
    document.getElementById("job-duration").textContent = answer.duration;
    if (answer.active && loss && Date.now() - lastLoss > 5000) {
      lastLoss = Date.now();
      loss.hidden = false;
      loss.src = `/jobs/${id}/loss.png?at=${lastLoss}`;
    }
    if (wasActive && !answer.active && !answer.text) {
      window.location.reload();  // it ended: show its images, files and buttons
      return false;
    }
    return answer.active || answer.text.length > 0;  // an ended job's log is read to its end, then left alone
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("job-rows");
  if (rows) {
    every(2000, async () => {
      const answer = await fetch(rows.dataset.refresh, {cache: "no-store"});
      if (answer.ok) rows.innerHTML = await answer.text();
    });
  }
  const job = document.getElementById("job");
  if (job) followJob(job);
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
  const method = document.getElementById("method");
  if (method) {
    method.addEventListener("change", () => {
      for (const input of document.querySelectorAll("input.hyperparameter")) {
        const value = input.dataset[`default${method.value.replace(/(^|-)(\w)/g, (_, __, c) => c.toUpperCase())}`];
        input.placeholder = value === undefined ? "not used by this method" : value;
      }
    });
  }
});
