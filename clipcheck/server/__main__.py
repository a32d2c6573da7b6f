from clipcheck.server import serve

serve()
