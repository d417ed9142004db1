// The dashboard's live updates: poll server-rendered fragments with If-None-Match (a 304 when
// nothing changed), tail the log from a cursor (following a retry's new attempt), show times
// as ages. Vanilla, no build step.
//
// Tabs of this site share what they poll (BroadcastChannel: same origin only): a tab that asks
// for a fragment tells the others (and what it got, when it changed), and a tab showing the
// same fragment takes that answer and waits a whole period from then. However many tabs show
// one page, the server sees about one request per period for it, and each tab is as fresh as
// if it had asked itself.
(function () {
  "use strict";
  var period = parseInt(document.body.getAttribute("data-poll-ms"), 10) || 1000;
  var banner = document.getElementById("live-status");
  var channel = null;
  try {
    channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("scheduler-live") : null;
  } catch (e) {
    channel = null;
  }
  var listeners = {}; // fragment URL -> functions called with another tab's answer for it
  // A few ms of this tab's own after another tab's poll, so that the tabs waiting for the same
  // moment do not all ask at once: the first one's word reaches the others before their turn.
  var slack = Math.floor(Math.random() * 40);
  if (channel) {
    channel.onmessage = function (event) {
      var m = event.data;
      if (!m || typeof m.url !== "string" || typeof m.etag !== "string") return;
      (listeners[m.url] || []).forEach(function (listen) { listen(m); });
    };
  }

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

  // One poller per element; a poll never overlaps the previous one, and a hidden tab does not
  // poll. `due()` (optional) says how many ms are left before a poll is needed: another tab
  // may have asked for the same thing meanwhile.
  function poller(step, due) {
    var busy = false, stopped = false, delay = period;
    function tick() {
      if (stopped) return;
      if (document.hidden || busy) { setTimeout(tick, delay); return; }
      var wait = due ? due() : 0;
      if (wait > 0) { setTimeout(tick, wait); return; }
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
    return { stop: function () { stopped = true; } };
  }

  function pollFragment(el) {
    var url = el.getAttribute("data-poll");
    var etag = el.getAttribute("data-etag") || null; // what the page was rendered from
    var stateAt = Date.now(); // when the request for what is shown was sent (any tab's)
    var checkedAt = stateAt; // when what is shown was last known current (any tab's)

    function show(html, tag, at) {
      etag = tag;
      stateAt = at;
      checkedAt = Math.max(checkedAt, at);
      // Keep the focus on a control that is still there after the update.
      var focused = document.activeElement;
      var keep = focused && el.contains(focused) && focused.getAttribute("href");
      el.innerHTML = html;
      refreshTimes(el);
      if (keep) {
        var again = el.querySelector('[href="' + keep.replace(/"/g, '\\"') + '"]');
        if (again) again.focus();
      }
      followAttempt();
    }

    (listeners[url] = listeners[url] || []).push(function (m) {
      if (m.at < stateAt) return; // older than what is shown
      if (m.etag === etag) {
        checkedAt = Math.max(checkedAt, m.at);
      } else if (typeof m.html === "string") {
        show(m.html, m.etag, m.at);
      } // else: a state this tab has not got; it asks when its own poll is due
    });

    poller(function () {
      var sent = Date.now();
      var headers = etag ? { "If-None-Match": etag } : {};
      // Said as the request leaves (not when it is answered), so that a tab whose turn comes
      // meanwhile waits: what was current at `sent` is asked for already.
      if (channel && etag) channel.postMessage({ url: url, etag: etag, at: sent });
      return fetch(url, { headers: headers, credentials: "same-origin", cache: "no-cache" })
        .then(function (response) {
          if (response.status === 304) {
            say("");
            checkedAt = Math.max(checkedAt, sent);
            return null;
          }
          if (!response.ok) { return failed(response) ? "stop" : null; }
          var tag = response.headers.get("ETag") || "";
          return response.text().then(function (html) {
            say("");
            if (sent < stateAt) return; // another tab's newer answer came first
            show(html, tag, sent);
            if (channel) channel.postMessage({ url: url, etag: tag, html: html, at: sent });
          });
        });
    }, function () { return checkedAt + period + slack - Date.now(); });
  }

  var tail = null; // the log tail running, if any

  function tailLog(pre) {
    var base = pre.getAttribute("data-log-url");
    var attempt = pre.getAttribute("data-attempt");
    var cursor = pre.getAttribute("data-cursor");
    var state = document.getElementById("log-state");
    var stopped = false;
    if (pre.getAttribute("data-final") === "1") return null;
    var running = poller(function () {
      var url = base + "?attempt=" + encodeURIComponent(attempt) +
        "&cursor=" + encodeURIComponent(cursor || "");
      return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
        if (stopped) return "stop";
        if (!response.ok) { return failed(response) ? "stop" : null; }
        return response.json().then(function (page) {
          if (stopped) return "stop"; // the page follows another attempt now
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
    return { stop: function () { stopped = true; running.stop(); } };
  }

  // A page opened without ?attempt= follows the job's current attempt: when a retry (the
  // operator's or an automatic one) starts a new attempt, the log shows that one from its start.
  function followAttempt() {
    var pre = document.getElementById("log");
    var fields = document.querySelector(".job-fields[data-attempt]");
    if (!pre || !fields || pre.getAttribute("data-follow") !== "1") return;
    var current = parseInt(fields.getAttribute("data-attempt"), 10);
    if (!(current > parseInt(pre.getAttribute("data-attempt"), 10))) return;
    if (tail) tail.stop();
    pre.textContent = "";
    pre.setAttribute("data-attempt", String(current));
    pre.setAttribute("data-cursor", "");
    pre.setAttribute("data-final", "0");
    pre.setAttribute("aria-label", "Output of attempt " + current);
    var state = document.getElementById("log-state");
    if (state) state.textContent = "Live: new output appears as the run writes it.";
    var nav = document.querySelector("nav.attempts[data-job-url]");
    if (nav) {
      var jobUrl = nav.getAttribute("data-job-url");
      while (nav.firstChild) nav.removeChild(nav.firstChild);
      for (var n = current; n >= 1; n--) {
        var link = document.createElement("a");
        link.href = jobUrl + "?attempt=" + n;
        link.textContent = "attempt " + n;
        if (n === current) link.setAttribute("aria-current", "page");
        nav.appendChild(link);
      }
      nav.hidden = current < 2;
    }
    tail = tailLog(pre);
  }

  document.querySelectorAll("[data-poll]").forEach(pollFragment);
  var pre = document.getElementById("log");
  if (pre && pre.getAttribute("data-log-url")) tail = tailLog(pre);
  refreshTimes(document);
  setInterval(function () { if (!document.hidden) refreshTimes(document); }, 5000);
})();
