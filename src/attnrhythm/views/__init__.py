"""What a person looks at: the HTML report (``report`` + ``report_assets``), the paper-ready figure
(``figure``), the terminal demo (``demo``) and the notebook display of a trace."""
