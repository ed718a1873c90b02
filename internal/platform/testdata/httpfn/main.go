// Command httpfn is an HTTP function for tests: it serves on $PORT and shows
// what it received.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Fn", "httpfn")
		json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery,
			"header": r.Header.Get("X-Test"), "body": string(body), "request_id": r.Header.Get("Ebb-Request-Id"),
		})
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"header": r.Header, "query": r.URL.RawQuery})
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		time.Sleep(d)
		fmt.Fprintln(w, "slept")
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) { os.Exit(4) })
	// /stream writes a first chunk and holds until /release is called on
	// the same instance (concurrency above 1 lets it through), so a test
	// can read the first chunk while the handler is still running; it gives
	// up after 20 s and says so in the second chunk.
	released := make(chan struct{})
	var holding atomic.Bool
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		holding.Store(true)
		fmt.Fprintf(w, "chunk 0\n")
		w.(http.Flusher).Flush()
		select {
		case <-released:
			fmt.Fprintf(w, "chunk 1\n")
		case <-time.After(20 * time.Second):
			holding.Store(false)
			fmt.Fprintf(w, "chunk 1 after giving up\n")
		}
	})
	mux.HandleFunc("/release", func(w http.ResponseWriter, r *http.Request) {
		if !holding.CompareAndSwap(true, false) {
			fmt.Fprintln(w, "nothing held")
			return
		}
		close(released)
		fmt.Fprintln(w, "released")
	})
	mux.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("log line from", r.Header.Get("Ebb-Request-Id"))
		fmt.Fprintln(w, "logged")
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
