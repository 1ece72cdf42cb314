# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One kept-alive HTTP(S) connection to a Flashduty endpoint, every request bounded by a deadline. Private.

``http.client`` speaks HTTP, opens proxy tunnels and TLS; added here is a wall-clock deadline no server can
stretch. A socket timeout bounds one read, so a server sending a byte every half second never times out: each
read of an answer (the proxy's answer to CONNECT included) gets only the time left before the deadline, and so
do connecting, the TLS handshake and sending.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import codecs
import collections
import contextlib
import functools
import http.client as http_client
import io
import socket
import ssl
import time
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import FlashdutyError, shown

# getaddrinfo() imports the idna codec the first time it resolves a host name. Were that import made by a
# sending thread while Ansible forks a worker, its lock would stay held in the worker, whose own first host
# name lookup (a change_event task) would then hang for ever: import it now, on the thread loading this module.
codecs.lookup('idna')
# Flashduty's answers are a few hundred bytes: more is a proxy page or worse, never kept whole.
MAX_ANSWER_BYTES = 64 * 1024
# ``headers``: an email.message.Message (any case); ``body``: at most MAX_ANSWER_BYTES.
Answer = collections.namedtuple('Answer', 'status headers body')


class TransportError(Exception):
    """No usable answer, worth another try (``reason`` redacted); ``timed_out`` when the deadline came first."""

    def __init__(self, reason, unreachable=False, timed_out=False):
        super(TransportError, self).__init__(reason)
        self.reason, self.unreachable, self.timed_out = reason, unreachable, timed_out


def _time_left(deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout('deadline reached')
    return left


class _DeadlineReader(io.RawIOBase):
    """The socket's reader, given only the time left before the deadline for each read."""

    def __init__(self, socket_io, sock, deadline):
        super(_DeadlineReader, self).__init__()
        self._socket_io, self._sock, self._deadline = socket_io, sock, deadline
        self.ended = False  # the peer closed the connection

    def readable(self):
        return True

    def readinto(self, buffer):
        self._sock.settimeout(_time_left(self._deadline))
        count = self._socket_io.readinto(buffer)
        self.ended = self.ended or not count
        return count

    def close(self):
        if not self.closed:
            self._socket_io.close()
        super(_DeadlineReader, self).close()


class _Answer(http_client.HTTPResponse):
    """http.client's response, reading through a _DeadlineReader."""

    def __init__(self, sock, debuglevel=0, method=None, url=None, deadline=None):
        super(_Answer, self).__init__(sock, debuglevel, method, url)
        # Keep http.client's socket reader (it keeps the socket open while the answer is read) under our deadline.
        self.reader = _DeadlineReader(self.fp.detach(), sock, deadline)
        self.fp = io.BufferedReader(self.reader)


class _HTTPSConnection(http_client.HTTPSConnection):

    deadline = 0.0  # of the request under way, a time.monotonic() value

    def connect(self):
        # As http.client does, but the handshake gets only what is left after connecting and tunnelling.
        http_client.HTTPConnection.connect(self)
        self.sock.settimeout(_time_left(self.deadline))
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host)


class HttpTransport:
    """One keep-alive HTTP(S) connection to an Endpoint, through ``https_proxy``/``http_proxy``/``no_proxy`` as urllib.

    Not thread-safe: each sending thread owns one; ``interrupt()`` may be called from another thread.
    """

    def __init__(self, endpoint, validate_certs=True, ca_path=None):
        self.endpoint = endpoint
        self.host = endpoint.host
        self._https = endpoint.scheme == 'https'
        self._ssl_context = _ssl_context(validate_certs, ca_path) if self._https else None
        proxy = getproxies().get(endpoint.scheme)
        self._proxy = proxy = None if not proxy or proxy_bypass(endpoint.host) else urlsplit(proxy if '://' in proxy else 'http://' + proxy)
        self._address = (endpoint.host, endpoint.port) if proxy is None else (proxy.hostname, proxy.port or 8080)  # where we connect
        self._target = endpoint.target
        self._headers = {'Content-Type': 'application/json', 'Accept': 'application/json', 'User-Agent': 'flashcat.flashduty-ansible'}
        self._proxy_headers = {}
        if proxy is not None and proxy.username:
            token = '%s:%s' % (unquote(proxy.username), unquote(proxy.password or ''))
            self._proxy_headers['Proxy-Authorization'] = 'Basic ' + base64.b64encode(token.encode('utf-8')).decode('ascii')
        if proxy is not None and not self._https:  # a plain-http proxy is asked for the absolute URL instead of tunnelling
            self._target = endpoint.url
            self._headers.update(self._proxy_headers)
        self._connection = None
        # The socket of the request under way: http.client forgets it as soon as an answer says Connection: close,
        # while its body is still to be read, and interrupt() must reach it then too.
        self._sock = None

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def interrupt(self):
        """Make a request blocked on this connection in another thread fail at once."""
        sock = self._sock or getattr(self._connection, 'sock', None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _new_connection(self):
        if not self._https:
            return http_client.HTTPConnection(*self._address)
        connection = _HTTPSConnection(*self._address, context=self._ssl_context)
        if self._proxy is not None:
            connection.set_tunnel(self.host, self.endpoint.port, headers=self._proxy_headers)
        return connection

    def post(self, body, deadline):
        """POST ``body`` (bytes) by ``deadline`` (time.monotonic()): an Answer, or TransportError (no usable answer),
        or FlashdutyError for what no retry mends (a certificate that does not verify)."""
        connection = self._connection
        reused = connection is not None and connection.sock is not None
        if connection is None:
            connection = self._connection = self._new_connection()
        connection.deadline = deadline
        connection.response_class = functools.partial(_Answer, deadline=deadline)
        try:
            connection.timeout = _time_left(deadline)
            if reused:
                connection.sock.settimeout(connection.timeout)
            connection.request('POST', self._target, body, self._headers)
            self._sock = connection.sock
            response = connection.getresponse()
            if response.reader.ended:
                raise http_client.IncompleteRead(b'', None)  # the headers were cut: http.client takes that for their end
            if response.length is not None and response.length <= MAX_ANSWER_BYTES:
                data = response.read()  # IncompleteRead if the connection closes before the end
            else:
                data = response.read(MAX_ANSWER_BYTES)
                if not response.isclosed():  # more than we keep: the rest is never read
                    response.close()
                    self.close()
            return Answer(response.status, response.msg, data)
        except ssl.SSLCertVerificationError as exc:
            error = FlashdutyError('could not verify the TLS certificate of %s: %s (set ca_path to your CA bundle, '
                                   'or validate_certs: false to skip the check)' % (self.host, describe(exc)))
        except socket.timeout:
            error = TransportError('no complete answer from %s' % self.host, timed_out=True)
        except (http_client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            # Reused, the connection was closed by the server while idle: not a failed attempt, the request goes again on a new one.
            error = None if reused else TransportError('the connection was closed by %s before an answer (%s)' % (self.host, describe(exc)))
        except http_client.IncompleteRead:
            error = TransportError('the connection was closed by %s in the middle of the answer' % self.host)
        except (http_client.HTTPException, ValueError) as exc:  # ValueError: a chunk size http.client cannot read
            error = TransportError('%s did not answer in HTTP/1.x: %s' % (self.host, describe(exc)))
        except OSError as exc:
            text, proxy = describe(exc), '%s:%d' % self._address
            if self._proxy is None:
                error = TransportError('could not reach %s: %s' % (self.host, text), unreachable=True)
            elif text.startswith('Tunnel connection failed'):
                error = TransportError('the proxy %s refused the tunnel to %s: %s' % (proxy, self.host, text[len('Tunnel connection failed: '):]),
                                       unreachable=True)
            else:
                error = TransportError('could not reach %s through the proxy %s: %s' % (self.host, proxy, text), unreachable=True)
        finally:
            self._sock = None
        self.close()
        if error is None:
            return self.post(body, deadline)
        raise error


def describe(exc):
    """An exception as a short reason on one line, the key masked."""
    text = shown(exc.strerror if getattr(exc, 'strerror', None) else exc, limit=200)
    return text or type(exc).__name__


def _ssl_context(validate_certs, ca_path):
    try:
        context = ssl.create_default_context(cafile=ca_path if validate_certs and ca_path else None)
    except (OSError, ssl.SSLError) as exc:
        raise FlashdutyError('ca_path: cannot load CA certificates from %s: %s' % (ca_path, describe(exc)), field='ca_path')
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
