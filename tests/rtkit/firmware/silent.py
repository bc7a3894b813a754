"""Comes up (the lifeline's ready byte) and then never says HELLO."""

import time


def main(fw):
    fw.lifeline.sendall(b"R")
    time.sleep(60)
