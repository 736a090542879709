/* The server that costs (almost) nothing, for bench.sip_profile --null: a UDP responder
 * that answers every request 200 OK, copying its Via, From, To, Call-ID and CSeq lines,
 * and stores nothing. One process, one recvfrom and one sendto per datagram, SO_RCVBUF
 * 4 MiB. What sipp reaches against it is what the client gives on this machine.
 *     null_registrar PORT      (binds 127.0.0.1:PORT; stopped by a signal) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int copied(const char *line, size_t len)
{
    static const char *names[] = {"via:", "from:", "to:", "call-id:", "cseq:"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t n = strlen(names[i]);
        if (len >= n && strncasecmp(line, names[i], n) == 0)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int rcvbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("bind");
        return 1;
    }
    static char in[65536], out[65536 + 64];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fromlen = sizeof from;
        ssize_t got = recvfrom(fd, in, sizeof in - 1, 0, (struct sockaddr *)&from, &fromlen);
        if (got <= 0)
            continue;
        in[got] = 0;
        size_t k = (size_t)sprintf(out, "SIP/2.0 200 OK\r\n");
        char *line = strstr(in, "\r\n");
        while (line != NULL) {
            line += 2;
            char *end = strstr(line, "\r\n");
            if (end == NULL || end == line)  /* the blank line ends the headers */
                break;
            if (copied(line, (size_t)(end - line))) {
                memcpy(out + k, line, (size_t)(end - line) + 2);
                k += (size_t)(end - line) + 2;
            }
            line = end;
        }
        k += (size_t)sprintf(out + k, "Content-Length: 0\r\n\r\n");
        sendto(fd, out, k, 0, (struct sockaddr *)&from, fromlen);
    }
}
