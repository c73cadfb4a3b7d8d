"""The models APIXO serves: their inputs, clocks and prices (``models``), and the table of
every input with the page it comes from (``table``). No I/O."""
