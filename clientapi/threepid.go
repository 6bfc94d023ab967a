package clientapi

import "github.com/gorilla/mux"

func (a *API) threepidRoutes(r *mux.Router) {}
