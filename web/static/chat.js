// 网页聊天 / the chat page: sends messages, shows the live draft of a streamed answer, then the real replies.
(function () {
  var drafts = {};   // message id -> the draft bubble of its answer
  var replies = {};  // message id -> reply bubbles that arrived while the draft was shown

  function list() { return document.getElementById("messages"); }

  function bubble(kind, text) {
    var div = document.createElement("div");
    div.className = "bubble " + kind;
    div.textContent = text;
    list().appendChild(div);
    list().scrollTop = list().scrollHeight;
    return div;
  }

  function status(text) { document.getElementById("chat-status").textContent = text; }

  function onDraft(data) {
    var div = drafts[data.reply_to];
    if (!div) { div = drafts[data.reply_to] = bubble("bot draft", ""); }
    div.textContent = data.text;
    list().scrollTop = list().scrollHeight;
  }

  function onMessage(data) {
    var div = bubble("bot", data.text);
    div.dataset.replyTo = data.reply_to || "";
    (data.images || []).forEach(function (src) {
      var img = document.createElement("img");
      img.src = src;
      img.alt = "图片 image";
      div.appendChild(img);
    });
    (data.voices || []).forEach(function (src) {
      var audio = document.createElement("audio");
      audio.controls = true;
      audio.src = src;
      div.appendChild(audio);
    });
    if (drafts[data.reply_to]) {
      // the real reply is shown when the answer is done; until then the draft stays the live view
      div.hidden = true;
      (replies[data.reply_to] = replies[data.reply_to] || []).push(div);
    }
  }

  function onDone(data) {
    var draft = drafts[data.reply_to];
    if (draft) { draft.remove(); delete drafts[data.reply_to]; }
    (replies[data.reply_to] || []).forEach(function (div) { div.hidden = false; });
    delete replies[data.reply_to];
    status("");
    list().scrollTop = list().scrollHeight;
  }

  function connect() {
    var source = new EventSource("/chat/stream");
    source.addEventListener("draft", function (e) { onDraft(JSON.parse(e.data)); });
    source.addEventListener("message", function (e) { onMessage(JSON.parse(e.data)); });
    source.addEventListener("done", function (e) { onDone(JSON.parse(e.data)); });
    source.onerror = function () { status("连接中断，正在重连… (reconnecting)"); };
    source.onopen = function () { status(""); };
  }

  function send(event) {
    event.preventDefault();
    var box = document.getElementById("chat-text");
    var text = box.value.trim();
    if (!text) { return; }
    var body = new URLSearchParams();
    body.set("text", text);
    bubble("mine", text);
    box.value = "";
    status("思考中… (thinking)");
    fetch("/chat/send", {
      method: "POST",
      headers: { "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content },
      body: body
    }).then(function (response) {
      if (!response.ok) {
        return response.json().then(function (data) { status(data.error || ("HTTP " + response.status)); });
      }
    }).catch(function () { status("发送失败 (send failed)"); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("chat-form");
    form.addEventListener("submit", send);
    document.getElementById("chat-text").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { form.requestSubmit(); }
    });
    list().scrollTop = list().scrollHeight;
    connect();
  });
})();
