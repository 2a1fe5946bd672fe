// Interop client: runs the interop scenario against an IMService server with Apache Thrift's Go
// library (Debian golang-thrift-dev) and code generated at test time by `thrift --gen go`, then
// prints what the server answered as one JSON object on stdout (checked by
// tests/interop/test_go.py). Built in GOPATH mode; the generated package is imported as interop/rpc.
//
// Usage: client HOST PORT buffered|framed CHAT     (CHAT is "<member1>:<member2>")
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"interop/rpc"
)

type message struct {
	Chat     string `json:"chat"`
	Text     string `json:"text"`
	Sender   string `json:"sender"`
	SendTime int64  `json:"send_time"`
}

type page struct {
	Code       int32     `json:"code"`
	Msg        string    `json:"msg"`
	Messages   []message `json:"messages"`
	HasMore    *bool     `json:"has_more"`
	NextCursor *int64    `json:"next_cursor"`
}

type status struct {
	Code int32  `json:"code"`
	Msg  string `json:"msg"`
}

type result struct {
	Client    string   `json:"client"`
	Transport string   `json:"transport"`
	Sends     []status `json:"sends"`
	Forward   []page   `json:"forward"`
	Reverse   page     `json:"reverse"`
	Invalid   status   `json:"invalid"`
	After     page     `json:"after"`
}

func toPage(r *rpc.PullResponse) page {
	p := page{Code: r.Code, Msg: r.Msg, Messages: []message{}, HasMore: r.HasMore, NextCursor: r.NextCursor}
	for _, m := range r.Messages {
		p.Messages = append(p.Messages, message{m.Chat, m.Text, m.Sender, m.SendTime})
	}
	return p
}

func boolp(b bool) *bool { return &b }

func scenario(ctx context.Context, c *rpc.IMServiceClient, chat, transport string) (*result, error) {
	members := strings.SplitN(chat, ":", 2)
	out := &result{Client: "go", Transport: transport, Sends: []status{}, Forward: []page{}}
	for i := 0; i < 5; i++ {
		// Like a Kitex client, Go writes every default-requiredness field, SendTime 0 included.
		m := &rpc.Message{Chat: chat, Text: fmt.Sprintf("m%d", i), Sender: members[i%2]}
		r, err := c.Send(ctx, &rpc.SendRequest{Message: m})
		if err != nil {
			return nil, fmt.Errorf("Send %d: %w", i, err)
		}
		out.Sends = append(out.Sends, status{r.Code, r.Msg})
	}
	var cursor int64
	for n := 0; n < 10; n++ {
		// Reverse is always set, as the template's Hertz gateway does.
		r, err := c.Pull(ctx, &rpc.PullRequest{Chat: chat, Cursor: cursor, Limit: 2, Reverse: boolp(false)})
		if err != nil {
			return nil, fmt.Errorf("Pull page %d: %w", n, err)
		}
		out.Forward = append(out.Forward, toPage(r))
		if r.Code != 0 || !r.GetHasMore() {
			break
		}
		cursor = r.GetNextCursor()
	}
	r, err := c.Pull(ctx, &rpc.PullRequest{Chat: chat, Cursor: 0, Limit: 3, Reverse: boolp(true)})
	if err != nil {
		return nil, fmt.Errorf("Pull reverse: %w", err)
	}
	out.Reverse = toPage(r)
	bad := &rpc.Message{Chat: chat, Text: "intruder", Sender: "carol"}
	s, err := c.Send(ctx, &rpc.SendRequest{Message: bad})
	if err != nil {
		return nil, fmt.Errorf("invalid Send: %w", err)
	}
	out.Invalid = status{s.Code, s.Msg}
	// The connection is still usable after an in-band error.
	r, err = c.Pull(ctx, &rpc.PullRequest{Chat: chat, Cursor: 0, Limit: 10})
	if err != nil {
		return nil, fmt.Errorf("Pull after the invalid Send: %w", err)
	}
	out.After = toPage(r)
	return out, nil
}

func main() {
	if len(os.Args) != 5 || (os.Args[3] != "buffered" && os.Args[3] != "framed") {
		fmt.Fprintln(os.Stderr, "usage: client HOST PORT buffered|framed CHAT")
		os.Exit(64)
	}
	host, port, transport, chat := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	strict := true
	conf := &thrift.TConfiguration{
		ConnectTimeout:     5 * time.Second,
		SocketTimeout:      15 * time.Second,
		TBinaryStrictRead:  &strict,
		TBinaryStrictWrite: &strict,
	}
	var trans thrift.TTransport = thrift.NewTSocketConf(net.JoinHostPort(host, port), conf)
	if transport == "framed" {
		trans = thrift.NewTFramedTransportConf(trans, conf)
	} else {
		trans = thrift.NewTBufferedTransport(trans, 4096)
	}
	if err := trans.Open(); err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	defer trans.Close()
	proto := thrift.NewTBinaryProtocolConf(trans, conf)
	client := rpc.NewIMServiceClient(thrift.NewTStandardClient(proto, proto))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := scenario(ctx, client, chat, transport)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "encode:", err)
		os.Exit(1)
	}
}
