"""A small real HTTP server on 127.0.0.1 that answers like an OpenAI-compatible LLM server, but badly, in one of
several ways (the first argument); the second is the port. The tests start it as a process and stop it by its PID.

    python tests/misbehaving_server.py MODE PORT [FLAG_FILE]

Modes: models-null, models-int (/models lists no model the usual way); html-404 (a plain web server: every path is a
404 page); slow-models (/models answers after 30 s; FLAG_FILE is written when the request arrives); nan (log-probs
that are NaN after the start-up probe); healthy (valid log-probs); huge-usage (valid log-probs, usage counts of
1e400); chat-prose (chat answers whose first token is not an action word).
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE, PORT = sys.argv[1], int(sys.argv[2])
FLAG_FILE = sys.argv[3] if len(sys.argv) > 3 else None
WORDS = [" left", " right", " forward", " pickup", " drop", " toggle", " done"]


def completion(value, usage="10"):
    """A completions answer whose first token's top log-probs give every action word `value` (raw JSON text)."""
    top = "{" + ", ".join(f'"{word}": {value}' for word in WORDS) + "}"
    return ('{"choices": [{"text": " left", "logprobs": {"top_logprobs": [' + top + '], "tokens": [" left"], '
            '"token_logprobs": [' + value + ']}}], "usage": {"prompt_tokens": ' + usage + ', "completion_tokens": 1}}')


class Handler(BaseHTTPRequestHandler):
    completions = 0

    def send(self, status, body, kind="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if MODE == "html-404":
            return self.send(404, "<html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1>\n"
                                  "<p>The requested URL was not found on this server.</p>\n</body></html>\n", "text/html")
        if self.path.endswith("/models"):
            if MODE == "slow-models":
                if FLAG_FILE:
                    open(FLAG_FILE, "w").close()
                time.sleep(30)
            data = {"models-null": None, "models-int": 5}.get(MODE, [{"id": "fake-model", "object": "model"}])
            return self.send(200, json.dumps({"object": "list", "data": data}))
        self.send(404, '{"error": {"message": "no such path"}}')

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        if MODE == "html-404":
            return self.send(404, "<html><body><h1>Not Found</h1></body></html>\n", "text/html")
        if self.path.endswith("/chat/completions"):
            top = [{"token": token, "logprob": -0.1 * i} for i, token in enumerate(["Sure", ",", " I", " will"])]
            return self.send(200, json.dumps({"choices": [{"message": {"content": "Sure, I will"},
                                                           "logprobs": {"content": [{"top_logprobs": top}]}}]}))
        Handler.completions += 1
        if payload.get("echo"):  # the echo probe: an answer whose text is not a string
            return self.send(200, '{"choices": [{"text": 5, "logprobs": {"tokens": [5], "token_logprobs": [null]}}]}')
        if MODE == "nan" and Handler.completions > 2:
            return self.send(200, completion("NaN"))
        self.send(200, completion("-1.5", "1e400" if MODE == "huge-usage" else "10"))

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
