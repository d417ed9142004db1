// The dashboard's live updates: poll server-rendered fragments with If-None-Match (a 304 when
// nothing changed), tail the log from a cursor, show times as ages. Vanilla, no build step.
(function () {
  "use strict";
  var period = parseInt(document.body.getAttribute("data-poll-ms"), 10) || 1000;
  var banner = document.getElementById("live-status");

  function say(text) {
    if (!banner) return;
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function age(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    var h = Math.floor(m / 60);
    if (h < 48) return h + " h";
    return Math.floor(h / 24) + " d";
  }

  function refreshTimes(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time[data-age]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (isNaN(at)) return;
      el.textContent = age(now - at) + " ago";
      el.title = el.getAttribute("datetime");
    });
    (root || document).querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = "running " + age(now - parseInt(el.getAttribute("data-since"), 10));
    });
  }

  function failed(response) {
    if (response.status === 401) {
      say("Your session has ended: reload the page to sign in again.");
      return true;
    }
    say("Live updates paused: the server answered " + response.status + ". Retrying…");
    return false;
  }

  // One poller per element; a poll never overlaps the previous one, and a hidden tab does not poll.
  function poller(step) {
    var busy = false, stopped = false, delay = period;
    function tick() {
      if (stopped) return;
      if (document.hidden || busy) { setTimeout(tick, delay); return; }
      busy = true;
      step().then(function (result) {
        busy = false;
        if (result === "stop") { stopped = true; return; }
        delay = result === "again" ? 0 : period;
        setTimeout(tick, delay);
      }, function () {
        busy = false;
        say("Live updates paused: the server cannot be reached. Retrying…");
        delay = Math.min(delay * 2 || period, 15000);
        setTimeout(tick, delay);
      });
    }
    setTimeout(tick, period);
  }

  function pollFragment(el) {
    var url = el.getAttribute("data-poll"), etag = null;
    poller(function () {
      var headers = etag ? { "If-None-Match": etag } : {};
      return fetch(url, { headers: headers, credentials: "same-origin", cache: "no-cache" })
        .then(function (response) {
          if (response.status === 304) { say(""); return null; }
          if (!response.ok) { return failed(response) ? "stop" : null; }
          etag = response.headers.get("ETag");
          return response.text().then(function (html) {
            say("");
            // Keep the focus on a control that is still there after the update.
            var focused = document.activeElement;
            var keep = focused && el.contains(focused) && focused.getAttribute("href");
            el.innerHTML = html;
            refreshTimes(el);
            if (keep) {
              var again = el.querySelector('[href="' + keep.replace(/"/g, '\\"') + '"]');
              if (again) again.focus();
            }
          });
        });
    });
  }

  function tailLog(pre) {
    var base = pre.getAttribute("data-log-url");
    var cursor = pre.getAttribute("data-cursor");
    var state = document.getElementById("log-state");
    if (pre.getAttribute("data-final") === "1") return;
    poller(function () {
      var url = base + "&cursor=" + encodeURIComponent(cursor || "");
      return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
        if (!response.ok) { return failed(response) ? "stop" : null; }
        return response.json().then(function (page) {
          say("");
          var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          if (page.text) pre.appendChild(document.createTextNode(page.text));
          if (atEnd) pre.scrollTop = pre.scrollHeight;
          cursor = page.cursor;
          if (page.final) {
            pre.setAttribute("data-final", "1");
            if (state) state.textContent = "Attempt " + page.attempt + " is over.";
            return "stop";
          }
          return page.more ? "again" : null;
        });
      });
    });
  }

  document.querySelectorAll("[data-poll]").forEach(pollFragment);
  document.querySelectorAll("pre[data-log-url]").forEach(tailLog);
  refreshTimes(document);
  setInterval(function () { if (!document.hidden) refreshTimes(document); }, 5000);
})();
