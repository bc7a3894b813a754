/*
 * native_echo.c - a native firmware for amplink's simulated processors: the device side
 * of one rpmsg link over two vrings (amplink_rpmsg.h), announcing "rpmsg-echo" and sending
 * every message back to its sender. It follows the convention of
 * amplink/platforms/sim_abi.py (see amplink_rpmsg.h for the variables it reads).
 *
 * Its own table (the .resource_table section, from amplink_rpmsg.h) asks for a trace
 * buffer and one rpmsg vdev, every address left to the host. Everything read from shared
 * memory is checked.
 *
 * Build: gcc -O2 -Wall -o native_echo native_echo.c   (amplink_rpmsg.h beside it)
 * Run:   SimRemoteProc("./native_echo")  or  amplink run --native ./native_echo
 * Exit status: 0 when the host hangs up, 2 on a bad setup, 3 when the host breaks the
 * ring protocol.
 */
#define AMPLINK_FW_NAME "native_echo"
#include "amplink_rpmsg.h"

#define ECHO_ADDR 1024
#define SERVICE "rpmsg-echo"

/* Echo from the address it was sent to; others are dropped. 0 (keep the message) when
   the host posted no buffer for the answer yet. */
static int echo(uint32_t src, uint32_t dst, const uint8_t *payload, uint16_t len)
{
    return dst != ECHO_ADDR || amplink_rpmsg_send(ECHO_ADDR, src, payload, len);
}

int main(void)
{
    if (amplink_fw_start())
        return 0; /* the host went away before we came up */
    amplink_announce(SERVICE, ECHO_ADDR);
    amplink_trace("native_echo: up, serving rpmsg-echo at 0x400\n");
    return amplink_fw_run(echo, -1, NULL);
}
