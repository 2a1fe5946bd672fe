// Interop server: IMService in memory on Apache Thrift's Go library (Debian golang-thrift-dev,
// TSimpleServer, strict binary protocol, framed or buffered transport), with code generated at
// test time by `thrift --gen go`. tests/interop/test_go.py points chatsvc's own Python client at it.
//
// Semantics follow chatsvc's: the chat is "<a>:<b>" and is stored under its canonical form
// (members sorted); the sender must be a member (else Code 400); SendTime is assigned by the server
// in microseconds, strictly increasing; Pull pages by inclusive send_time cursor, forward from
// Cursor (0 = oldest) or, with Reverse, backward from Cursor (0 = newest); Limit 0 means 10;
// NextCursor is the send_time of the first message not returned.
// A Send whose Text is "boom" makes the handler return a Go error, which the Thrift library turns
// into a TApplicationException (INTERNAL_ERROR): the client's exception path.
//
// Usage: server -addr 127.0.0.1:PORT [-transport framed|buffered]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"interop/rpc"
)

type store struct {
	mu    sync.Mutex
	chats map[string][]*rpc.Message // canonical chat -> messages, oldest first
	last  int64
}

func canonical(chat string) (string, []string, bool) {
	parts := strings.Split(chat, ":")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", nil, false
	}
	sort.Strings(parts)
	return parts[0] + ":" + parts[1], parts, true
}

func (s *store) Send(ctx context.Context, req *rpc.SendRequest) (*rpc.SendResponse, error) {
	m := req.GetMessage()
	if m == nil {
		return &rpc.SendResponse{Code: 400, Msg: "invalid message: missing"}, nil
	}
	if m.Text == "boom" {
		return nil, errors.New("boom requested")
	}
	chat, members, ok := canonical(m.Chat)
	if !ok {
		return &rpc.SendResponse{Code: 400, Msg: "invalid chat: " + m.Chat}, nil
	}
	if m.Sender != members[0] && m.Sender != members[1] {
		return &rpc.SendResponse{Code: 400, Msg: "invalid sender: not a member of the chat"}, nil
	}
	if m.Text == "" {
		return &rpc.SendResponse{Code: 400, Msg: "invalid text: empty"}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := time.Now().UnixMicro()
	if t <= s.last {
		t = s.last + 1
	}
	s.last = t
	s.chats[chat] = append(s.chats[chat], &rpc.Message{Chat: chat, Text: m.Text, Sender: m.Sender, SendTime: t})
	return &rpc.SendResponse{Code: 0, Msg: "success"}, nil
}

func (s *store) Pull(ctx context.Context, req *rpc.PullRequest) (*rpc.PullResponse, error) {
	chat, _, ok := canonical(req.Chat)
	if !ok {
		return &rpc.PullResponse{Code: 400, Msg: "invalid chat: " + req.Chat}, nil
	}
	if req.Cursor < 0 || req.Limit < 0 {
		return &rpc.PullResponse{Code: 400, Msg: "invalid cursor or limit"}, nil
	}
	limit := int(req.Limit)
	if limit == 0 {
		limit = 10
	}
	s.mu.Lock()
	all := s.chats[chat]
	var picked []*rpc.Message
	if req.GetReverse() {
		for i := len(all) - 1; i >= 0 && len(picked) <= limit; i-- {
			if req.Cursor == 0 || all[i].SendTime <= req.Cursor {
				picked = append(picked, all[i])
			}
		}
	} else {
		for i := 0; i < len(all) && len(picked) <= limit; i++ {
			if all[i].SendTime >= req.Cursor {
				picked = append(picked, all[i])
			}
		}
	}
	s.mu.Unlock()
	hasMore := len(picked) > limit
	var next int64
	if hasMore {
		next = picked[limit].SendTime
		picked = picked[:limit]
	}
	msgs := make([]*rpc.Message, 0, len(picked))
	for _, m := range picked {
		c := *m
		msgs = append(msgs, &c)
	}
	return &rpc.PullResponse{Code: 0, Msg: "success", Messages: msgs, HasMore: &hasMore, NextCursor: &next}, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "listen address")
	transport := flag.String("transport", "framed", "framed or buffered")
	flag.Parse()
	// The generated processor otherwise runs a 5 ms connectivity ticker per request.
	thrift.ServerConnectivityCheckInterval = 0
	strict := true
	conf := &thrift.TConfiguration{TBinaryStrictRead: &strict, TBinaryStrictWrite: &strict}
	var factory thrift.TTransportFactory
	switch *transport {
	case "framed":
		factory = thrift.NewTFramedTransportFactoryConf(thrift.NewTTransportFactory(), conf)
	case "buffered":
		factory = thrift.NewTBufferedTransportFactory(8192)
	default:
		fmt.Fprintln(os.Stderr, "unknown transport", *transport)
		os.Exit(64)
	}
	sock, err := thrift.NewTServerSocket(*addr)
	if err != nil {
		log.Fatal(err)
	}
	handler := &store{chats: map[string][]*rpc.Message{}}
	srv := thrift.NewTSimpleServer4(rpc.NewIMServiceProcessor(handler), sock, factory,
		thrift.NewTBinaryProtocolFactoryConf(conf))
	fmt.Println("interop go server listening on", *addr, "transport", *transport)
	if err := srv.Serve(); err != nil {
		log.Fatal(err)
	}
}
