// Optional live update: every few seconds, fetch this same page and swap in the parts marked
// data-live. Without JavaScript the pages read the same, only without refreshing themselves.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length || !window.fetch || !window.DOMParser) return;
  var status = document.querySelector("[data-live-status]");

  function refresh() {
    if (document.visibilityState === "hidden") return;
    fetch(window.location.href, { headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        parts.forEach(function (part) {
          var replacement = fresh.getElementById(part.id);
          if (replacement) part.innerHTML = replacement.innerHTML;
        });
        if (status) status.textContent = "Updated at " + new Date().toLocaleTimeString();
      })
      .catch(function (error) {
        if (status) status.textContent = "Not updated: " + error.message;
      });
  }
  window.setInterval(refresh, PERIOD_MS);
})();
