// 日志页的实时更新 / the log page's live tail: one EventSource on /logs/stream, lines added as text (never as HTML).
(function () {
  var LEVELS = { "": 0, DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40 };
  var source = null;

  function list() { return document.getElementById("log-lines"); }

  function setState(text) {
    var state = document.getElementById("log-state");
    if (state) { state.textContent = text; }
  }

  function atBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 40; }

  function add(className, levelno, text) {
    var box = list();
    var follow = document.getElementById("log-autoscroll").checked && atBottom(box);
    var empty = document.getElementById("log-empty");
    if (empty) { empty.remove(); }
    var item = document.createElement("li");
    item.className = className;
    item.dataset.levelno = String(levelno);
    item.textContent = text;
    if (levelno < LEVELS[box.dataset.level || ""]) { item.classList.add("hidden"); }
    box.appendChild(item);
    var keep = parseInt(box.dataset.keep, 10) || 1000;
    while (box.children.length > keep) { box.removeChild(box.firstElementChild); }
    if (follow) { box.scrollTop = box.scrollHeight; }
  }

  function connect() {
    var box = list();
    if (source) { source.close(); }
    var query = "?level=" + encodeURIComponent(box.dataset.level || "") + "&after=" + encodeURIComponent(box.dataset.after);
    source = new EventSource(box.dataset.stream + query);
    source.onopen = function () { setState("● 实时 live"); };
    source.onerror = function () { setState("○ 已断开，正在重连 (disconnected, retrying)"); };
    source.onmessage = function (event) {
      var line = JSON.parse(event.data);
      box.dataset.after = event.lastEventId;
      add("log-" + line.level.toLowerCase(), line.levelno, line.text);
    };
    source.addEventListener("notice", function (event) {
      add("log-notice", 100, JSON.parse(event.data).text);
    });
  }

  function filter(level) {
    var box = list();
    var wanted = LEVELS[level] || 0;
    if (wanted < LEVELS[box.dataset.level || ""]) {
      // lines below the old level were never sent: load them from the server
      window.location.assign(window.location.pathname + (level ? "?level=" + encodeURIComponent(level) : ""));
      return;
    }
    box.dataset.level = level;
    Array.prototype.forEach.call(box.children, function (item) {
      item.classList.toggle("hidden", parseInt(item.dataset.levelno || "100", 10) < wanted);
    });
    history.replaceState(null, "", level ? "?level=" + encodeURIComponent(level) : window.location.pathname);
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = list();
    if (!box || typeof EventSource === "undefined") { return; }
    box.scrollTop = box.scrollHeight;
    document.getElementById("log-level").addEventListener("change", function (event) { filter(event.target.value); });
    window.addEventListener("beforeunload", function () { if (source) { source.close(); } });
    connect();
  });
})();
