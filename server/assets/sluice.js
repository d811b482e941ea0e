// Sluice's one script: confirmations, the time-zone choice, and live run pages and job
// logs over server-sent events. Served from the binary; it talks to this origin only.
"use strict";

document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// Times are rendered by the server in the zone the cookie names (UTC without it).
document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("zone-toggle");
  if (toggle) {
    toggle.addEventListener("click", () => {
      const current = document.getElementById("zone").dataset.zone;
      const browser = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
      const next = current === "UTC" ? browser : "UTC";
      document.cookie = "sluice_tz=" + encodeURIComponent(next) + "; Path=/; SameSite=Strict; Max-Age=31536000";
      window.location.reload();
    });
  }
  const run = document.getElementById("run");
  if (run && run.dataset.events) {
    follow(run);
  }
  const log = document.getElementById("log");
  if (log && log.dataset.follow) {
    followLog(log);
  }
  // A page of something still going (a backfill): look again every few seconds.
  const refresh = document.querySelector("[data-refresh]");
  if (refresh) {
    window.setTimeout(() => window.location.reload(), 1000 * Number(refresh.dataset.refresh));
  }
  // An action whose outcome had not come yet: look again shortly.
  const waiting = document.querySelector("[data-waiting]");
  if (waiting) {
    window.setTimeout(() => window.location.reload(), 1000);
  }
});

function setState(element, state) {
  for (const name of Array.from(element.classList)) {
    if (name.startsWith("state-")) {
      element.classList.remove(name);
    }
  }
  element.classList.add("state-" + state);
}

function follow(run) {
  const source = new EventSource(run.dataset.events);
  source.addEventListener("run", (event) => {
    const update = JSON.parse(event.data);
    run.dataset.state = update.state;
    const badge = document.getElementById("run-state");
    badge.textContent = update.state;
    setState(badge, update.state);
    const finished = document.getElementById("run-finished");
    if (finished && update.finished) {
      finished.textContent = update.finished;
    }
    for (const [name, job] of Object.entries(update.jobs)) {
      for (const element of document.querySelectorAll("[data-job]")) {
        if (element.dataset.job !== name) {
          continue;
        }
        if (element.matches("g.node")) {
          setState(element, job.state);
          element.querySelector("text.label").textContent = job.label;
        } else {
          const pill = element.querySelector(".pill");
          pill.textContent = job.state;
          setState(pill, job.state);
          element.querySelector(".label").textContent = job.detail;
        }
      }
    }
  });
}

// New lines of a running attempt, appended as text (never parsed as HTML), in the page's
// zone; the view stays at the bottom while the reader has not scrolled up.
function followLog(log) {
  const zone = document.getElementById("zone").dataset.zone || "UTC";
  const clock = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hourCycle: "h23",
  });
  const source = new EventSource(log.dataset.follow);
  source.addEventListener("lines", (event) => {
    const update = JSON.parse(event.data);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    for (const line of update.lines) {
      const row = document.createElement("span");
      row.className = "log-" + line.stream;
      const at = document.createElement("span");
      at.className = "log-at";
      at.textContent = clock.format(new Date(line.at));
      row.append(at, " " + line.text);
      log.append(row, "\n");
    }
    document.getElementById("log-empty").hidden = log.childElementCount > 0;
    if (atBottom) {
      log.scrollTop = log.scrollHeight;
    }
  });
  source.addEventListener("end", () => {
    source.close();
    log.dataset.ended = "1";
  });
}
