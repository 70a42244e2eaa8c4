// The terminal page: xterm.js on a WebSocket that carries a shell on a pseudo-terminal in a VM.
//
// The link's one-time token is in the URL's fragment, which the browser never sends; it is
// dropped from the address bar at once and sent only in the socket's first message, with the
// screen's size. Then binary frames carry keystrokes one way and the terminal's output the
// other; text frames carry JSON: {"type": "resize", cols, rows} from here, and "ready", "exit"
// and "error" from the controller.
"use strict";

(function () {
  const token = new URLSearchParams(window.location.hash.slice(1)).get("token") || "";
  window.history.replaceState(null, "", window.location.pathname);

  const statusLine = document.getElementById("status");
  const showStatus = (text, ended) => {
    statusLine.textContent = text;
    statusLine.classList.toggle("ended", Boolean(ended));
  };

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "DejaVu Sans Mono, Menlo, Consolas, monospace",
    fontSize: 14,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  // For tests and the curious: the terminal and where its session stands.
  const state = { term: term, status: "connecting", exit: null, error: null };
  window.hearthTerminal = state;

  if (!token) {
    state.status = "ended";
    showStatus("This link carries no token: ask for a new terminal link.", true);
    return;
  }

  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + window.location.host + window.location.pathname + "/socket");
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const send = (data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(data);
  };

  socket.addEventListener("open", () => {
    send(JSON.stringify({ type: "open", token: token, cols: term.cols, rows: term.rows }));
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      state.status = "ready";
      showStatus("connected", false);
      term.focus();
    } else if (message.type === "exit") {
      state.exit = message;
      const how = message.signal ? "killed by " + message.signal : "exit code " + message.code;
      showStatus("The shell has ended (" + how + ").", true);
    } else if (message.type === "error") {
      state.error = message;
      showStatus(message.message, true);
    }
  });
  socket.addEventListener("close", (event) => {
    state.status = "ended";
    if (!state.exit && !state.error) {
      showStatus("Disconnected" + (event.reason ? ": " + event.reason : "."), true);
    }
  });

  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize((size) => send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows })));
  window.addEventListener("resize", () => fit.fit());
})();
