// The Go contender of scripts/bench_gate.ts (`deno task bench:gate` builds it with `go build` into
// a temporary folder; standard library only).
//
// net/http/httputil's ReverseProxy built as llama-swap builds its proxy to an engine
// (mostlygeek/llama-swap, proxy/process.go, NewProcess): httputil.NewSingleHostReverseProxy(url)
// with the default transport, and a ModifyResponse that sets X-Accel-Buffering: no on
// text/event-stream answers. llama-swap sets no FlushInterval: ReverseProxy flushes
// text/event-stream and bodies of unknown length after every write by itself (FlushInterval -1).
// Left out: llama-swap's per-model concurrency limit (10 by default; beyond it, 429), its
// start-on-demand and its metrics; this is the proxy core alone.
//
// -idle N: the same with the transport's MaxIdleConnsPerHost (default 2) and MaxIdleConns raised
// to N, so that keep-alive to the engine survives concurrency above 2.
//
// Prints the port it listens on (127.0.0.1, a free port), then serves until killed.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
)

func main() {
	upstream := flag.String("upstream", "", "the engine's base URL")
	idle := flag.Int("idle", 0, "MaxIdleConnsPerHost (0: the default transport)")
	flag.Parse()

	target, err := url.Parse(*upstream)
	if err != nil || *upstream == "" {
		fmt.Fprintln(os.Stderr, "usage: goproxy -upstream URL [-idle N]")
		os.Exit(2)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(strings.ToLower(resp.Header.Get("Content-Type")), "text/event-stream") {
			resp.Header.Set("X-Accel-Buffering", "no")
		}
		return nil
	}
	if *idle > 0 {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConns = *idle
		transport.MaxIdleConnsPerHost = *idle
		proxy.Transport = transport
	}

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	fmt.Fprintln(os.Stderr, http.Serve(listener, proxy))
	os.Exit(1)
}
