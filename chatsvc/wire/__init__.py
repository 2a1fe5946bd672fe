"""The Thrift transport layer shared by chatsvc's server and its client.

``scan`` finds where a strict-binary message ends (enforcing size limits before anything is
allocated), ``framing`` detects and writes the unframed, framed and TTHeader transports, ``codec``
turns complete messages into thriftpy2 structs and back, ``pages`` and ``sends`` write and read a
page of messages and a Send call's arguments without them, ``writer`` coalesces writes, and
``idl`` loads the IDL at run time.
"""
