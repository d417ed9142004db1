"""Issue 11, hostile input: hypothesis-generated requests to every route of the real local stack.

One ``scheduler up`` (its own process, DynamoDB Local on disk) serves the whole package. The tests
send it generated requests over real HTTP: well-formed ones with httpx, malformed ones as raw bytes
on a socket (a request is sent whole, then the socket is half-closed, so the server never waits on
us). What they send:

- ``POST /webhook`` with hostile payloads that are *validly signed* (the signature is over the
  mutated body): wrong types, lone surrogates (``\\ud800`` escapes and raw CESU bytes), NUL and
  control characters, oversized fields, deep nesting, duplicate keys, huge numbers, other text
  encodings, form bodies, truncated and non-JSON bytes, bodies of megabytes;
- the same with missing, malformed or wrong signatures;
- deliveries with hostile headers (missing, duplicated, huge, odd bytes and names, folded lines,
  ``Content-Length`` that lies, chunked bodies, ``Expect``);
- every read route (``/repos/{owner}/{repo}/jobs`` with its query parameters, ``.../stats``,
  ``/jobs/{job_id}``, ``/healthz``) with traversal, percent-encoding, overlong segments, odd and
  garbage methods, odd HTTP versions and hostile query strings, cursors included: tampered ones,
  and ones forged with the built-in cursor key (public in the source) naming any position;
- malformed HTTP: garbage request lines and header blocks, pipelining, random bytes;
- bodies at the server's size limit (25 MB), one byte under and over it.

What every answer must show: no 5xx (a 503 only when the server says it is busy; more than a
handful fails), every 4xx a JSON body with a readable ``error``, a status line (but to a request
that declares HTTP/0.9), never the webhook secret; no 2xx to a delivery without a valid signature
or whose ``Content-Length`` is not its length in plain digits. What the books must show at the end
(a scan of the stack's own tables and its access log): the only jobs are those of validly signed
deliveries that the server answered 202 with their job id, each whole (its fields are what was
sent; counters and trigger guards match); no 5xx logged; the stack's resident memory stayed under
twice its size after warm-up plus 100 MB; and a plain signed push still makes a job that runs to
``passed``.

Sizes: CI-sized by default; ``SCHEDULER_RELIABILITY=full`` (``make reliability``) sends over
10,000 requests. Generation is derandomized (hypothesis also draws on constants of the project's
source), so a run is reproducible on the same tree. ``pytest -s`` prints one line of figures per
test: requests sent and a histogram of what came back (``bare``: a body without a status line,
``none``: the connection closed without an answer).

Layout: ``world.py`` (the stack, the senders, the invariants of every answer and the books),
``payloads.py`` (hostile webhook payloads and deliveries), one test module per route or kind of
request, and ``test_books.py``, which ``conftest.py`` runs after the others whatever the
selection (it checks the books of everything the others sent to the one stack).
"""
